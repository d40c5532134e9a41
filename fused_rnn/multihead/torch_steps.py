"""The multi-head cells' pointwise step as torch ops: the CPU path of the fused op (kernel "torch").

Same contract as fused_rnn.backends.triton.multihead's forward_step/backward_step, so the driver, the custom op and
its autograd serve both. The backward is written out, not left to autograd: no graph is built or walked, and the
GEMMs stay the driver's (one bmm per step, the weight gradients once after the loop). Math and carried state are in
ACC, as in the kernels.
"""

import torch
import torch.nn.functional as F


def _by_gate(head_major: torch.Tensor, gates: int, head_dim: int) -> torch.Tensor:
    """(bs, G * H) head-major rows as a gate-major (bs, G * H) tensor (a copy)."""
    batch = head_major.shape[0]
    return head_major.view(batch, -1, gates, head_dim).transpose(1, 2).reshape(batch, -1)


def _into_head_major(out: torch.Tensor, gate_major: torch.Tensor, gates: int, head_dim: int) -> None:
    batch = gate_major.shape[0]
    out.view(batch, -1, gates, head_dim).copy_(gate_major.view(batch, gates, -1, head_dim).transpose(1, 2))


def _slstm_gates(i_pre, f_pre, n_prev, m_prev, exp_forget):
    log_f = f_pre if exp_forget else F.logsigmoid(f_pre)
    kept = torch.where(n_prev == 0, float("-inf"), log_f + m_prev)
    from_input = i_pre >= kept
    m = torch.where(from_input, i_pre, kept)
    return m, torch.exp(i_pre - m), torch.exp(kept - m), from_input


def forward_step(cell, xg, hg, bias_hh, h, carried, out, saved, head_dim, exp_forget):
    """See fused_rnn.backends.triton.multihead.forward_step."""
    batch = out.shape[0]
    acc = carried[0].dtype if carried else (torch.float64 if out.dtype == torch.float64 else torch.float32)
    gates = xg.shape[1] // out.shape[1]
    recurrent = _by_gate(hg, gates, head_dim).to(acc)
    if bias_hh is not None:
        recurrent += bias_hh
    input_part = xg.to(acc)
    if cell == "slstm":
        c, n, m = (s[:batch] for s in carried)
        pre = input_part + recurrent
        i_pre, f_pre, z_pre, o_pre = pre.chunk(4, 1)
        if saved is not None:
            saved[:, : 4 * out.shape[1]] = pre
            torch.cat([c, n, m], 1, out=saved[:, 4 * out.shape[1] :])
        m_new, i_gate, f_gate, _ = _slstm_gates(i_pre, f_pre, n, m, exp_forget)
        c.mul_(f_gate).addcmul_(i_gate, torch.tanh(z_pre))
        n.mul_(f_gate).add_(i_gate)
        m.copy_(m_new)
        h_new = torch.sigmoid(o_pre) * c / n
    elif cell == "lstm":
        c = carried[0][:batch]
        i, f, g, o = (input_part + recurrent).chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        if saved is not None:
            torch.cat([i, f, g, o, c], 1, out=saved)
        c.mul_(f).addcmul_(i, g)
        h_new = o * torch.tanh(c)
    else:
        x_r, x_z, x_n = input_part.chunk(3, 1)
        h_r, h_z, h_n = recurrent.chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n_gate = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n_gate + z * h[:batch].to(acc)
        if saved is not None:
            torch.cat([r, z, n_gate, h_n], 1, out=saved)
    out.copy_(h_new)
    h[:batch] = out


def backward_step(cell, dh, dout, carried, saved, hprev, dgx, dgh, head_dim, exp_forget):
    """See fused_rnn.backends.triton.multihead.backward_step."""
    batch, hidden = dout.shape
    acc = carried[0].dtype
    d_out = dh[:batch].to(acc) + dout
    if cell == "slstm":
        i_pre, f_pre, z_pre, o_pre, c_prev, n_prev, m_prev = saved.chunk(7, 1)
        _, i_gate, f_gate, from_input = _slstm_gates(i_pre, f_pre, n_prev, m_prev, exp_forget)
        z, o = torch.tanh(z_pre), torch.sigmoid(o_pre)
        c = f_gate * c_prev + i_gate * z
        n = f_gate * n_prev + i_gate
        dc_in, dn_in, dm_in = (g[:batch] for g in carried)
        dc = dc_in + d_out * o / n
        dn = dn_in - d_out * o * c / (n * n)
        di, df = dc * z + dn, dc * c_prev + dn * n_prev
        dm = dm_in - di * i_gate - df * f_gate
        dkept = df * f_gate + torch.where(from_input, 0.0, dm)  # 0 for an empty state, as in the kernel
        grads = [
            di * i_gate + torch.where(from_input, dm, 0.0),
            dkept if exp_forget else dkept * torch.sigmoid(-f_pre),
            dc * i_gate * (1 - z * z),
            d_out * c / n * o * (1 - o),
        ]
        dc_in.copy_(dc * f_gate)
        dn_in.copy_(dn * f_gate)
        dm_in.copy_(dkept)
        gate_major = torch.cat(grads, 1)
        dgx.copy_(gate_major)
        _into_head_major(dgh, gate_major, 4, head_dim)
    elif cell == "lstm":
        i, f, g, o, c_prev = saved.chunk(5, 1)
        tanh_c = torch.tanh(f * c_prev + i * g)
        dc_in = carried[0][:batch]
        dc = dc_in + d_out * o * (1 - tanh_c * tanh_c)
        gate_major = torch.cat(
            [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), d_out * tanh_c * o * (1 - o)], 1
        )
        dc_in.copy_(dc * f)
        dgx.copy_(gate_major)
        _into_head_major(dgh, gate_major, 4, head_dim)
    else:
        r, z, n_gate, h_n = saved.chunk(4, 1)
        direct = carried[0][:batch]
        d_h = d_out + direct
        dn = d_h * (1 - z) * (1 - n_gate * n_gate)
        dz = d_h * (hprev.to(acc) - n_gate) * z * (1 - z)
        dr = dn * h_n * r * (1 - r)
        dgx.copy_(torch.cat([dr, dz, dn], 1))
        _into_head_major(dgh, torch.cat([dr, dz, dn * r], 1), 3, head_dim)
        direct.copy_(d_h * z)
