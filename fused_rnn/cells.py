"""What distinguishes the recurrent cells from each other, as data.

Everything that runs a sequence (the reference, the fused driver, the modules) is written once and
reads the cell's shape from here: how many gate blocks of H columns its weights have, and how many
fp32 columns of H the fused backward needs saved per row.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    name: str
    gates: int
    """Gate blocks in weight_ih / weight_hh (torch.nn order: LSTM i,f,g,o; GRU r,z,n)."""
    saved_width: int
    """fp32 columns of H saved per row for the fused backward."""
    has_cell_state: bool

    @property
    def is_gru(self) -> bool:
        return self.name == "gru"


CELLS = {
    # saved: i, f, g, o activations and c_prev
    "lstm": Cell("lstm", gates=4, saved_width=5, has_cell_state=True),
    # saved: r, z, n activations and h_prev W_hn^T + b_hn
    "gru": Cell("gru", gates=3, saved_width=4, has_cell_state=False),
    # the output h' itself is all the backward needs
    "rnn_tanh": Cell("rnn_tanh", gates=1, saved_width=0, has_cell_state=False),
    "rnn_relu": Cell("rnn_relu", gates=1, saved_width=0, has_cell_state=False),
}
