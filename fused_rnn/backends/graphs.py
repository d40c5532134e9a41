"""CUDA-graph replay of the step loops: the Triton driver's chunk by chunk, the C++ driver's ("cuda") call by call.

Launching a step from Python costs more host time than the GPU spends on it: on the H200 the Triton loop took
100-190 us per step against 3-6 us of GPU work, and the same GEMM + pointwise loop replayed as a CUDA graph took
6-7 us per step on an H100 (DESIGN.md). So on CUDA a padded call runs its steps as replays of graphs captured for
CHUNK_STEPS steps (64, 16, 4 and 1: any T), on buffers that a cache entry owns. Per chunk the call's rows are
copied in, the graph replayed and its rows copied out; the carried state (h and c forward, their gradients
backward) stays in the entry's buffers from chunk to chunk. Outputs and saved activations are copied into the
call's own tensors, so two forwards may run before one backward.

An entry is keyed by the device, the cell, the shapes and dtypes, the direction, what is saved and the weights'
addresses: a graph reads the weights where they were at its capture, so an optimizer's in-place update is seen and
a new tensor gets a new entry. Entries are bounded by count and by bytes (least recently used first out).

The C++ driver ("cuda") carries its state inside its op (c in fp32 for fp16/bf16), so its calls are captured whole
instead (WholeCalls): one graph per call signature, the second time it comes.

Not replayed: packed input on the Triton driver (its active batch changes from step to step), and a call made while
the stream is already capturing (torch.compile's "reduce-overhead" mode, a user's own graph), whose plain loop then
becomes part of that graph. FUSED_RNN_CUDA_GRAPHS=0 turns replay off.
"""

import os
import warnings
from collections import OrderedDict

import torch

from fused_rnn.packing import time_steps

ENABLED = os.environ.get("FUSED_RNN_CUDA_GRAPHS", "1") != "0"
REPLAYED_DEVICE_TYPES = ("cuda",)
CHUNK_STEPS = (64, 16, 4, 1)
# The rows of one chunk an entry buffers: at most this many bytes, so large batches get shorter chunks.
CHUNK_BYTES = 64 * 2**20
MAX_ENTRIES = 16
MAX_BYTES = 1 << 30

_entries: OrderedDict = OrderedDict()


def replays(device: torch.device, batch_sizes) -> bool:
    """Whether a call on `device` with these batch sizes (None: padded) runs on replayed graphs."""
    return ENABLED and batch_sizes is None and device.type in REPLAYED_DEVICE_TYPES and not _capturing(device)


def _capturing(device: torch.device) -> bool:
    return torch.cuda.is_current_stream_capturing()


def forward(loop, rows, reverse: bool) -> None:
    """Run sequence.ForwardLoop `loop` over every step of `rows` (its arguments after the steps), on replayed graphs."""
    _run(loop, rows, reverse, backward=False)


def backward(loop, rows, reverse: bool) -> None:
    """Run sequence.BackwardLoop `loop` over every step of `rows` in the backward's order, on replayed graphs."""
    _run(loop, rows, reverse, backward=True)


def chunk_plan(steps: int, longest: int) -> list[tuple[int, int]]:
    """(first step, steps) of each chunk, in time order, covering `steps` steps with the longest chunks of
    CHUNK_STEPS that are at most `longest` steps."""
    plan, start = [], 0
    for length in (n for n in CHUNK_STEPS if n <= longest):
        while steps - start >= length:
            plan.append((start, length))
            start += length
    return plan


def _run(loop, rows, reverse, backward):
    batch = loop.carried[0].shape[0]
    entry = _entry(loop, rows, reverse, backward, batch)
    for static, given in zip(entry.loop.carried, loop.carried, strict=True):
        static.copy_(given)
    chunks = chunk_plan(rows[0].shape[0] // batch, entry.longest)
    in_time = chunks[::-1] if reverse else chunks  # the order the forward visits them
    for first, length in in_time[::-1] if backward else in_time:
        graph = entry.graph(length)
        span, count = slice(first * batch, (first + length) * batch), length * batch
        for index in entry.inputs:
            entry.rows[index][:count].copy_(rows[index][span])
        graph.replay()
        for index in entry.outputs:
            rows[index][span].copy_(entry.rows[index][:count])
    for static, given in zip(entry.loop.carried, loop.carried, strict=True):
        given.copy_(static)


def _entry(loop, rows, reverse, backward, batch):
    key = _key(loop, rows, reverse, backward)
    entry = _entries.get(key)
    if entry is None:
        entry = _Entry(loop, rows, reverse, backward, batch)
        _entries[key] = entry
        while len(_entries) > 1 and (
            len(_entries) > MAX_ENTRIES or sum(e.nbytes for e in _entries.values()) > MAX_BYTES
        ):
            _entries.popitem(last=False)
    _entries.move_to_end(key)
    return entry


def _key(loop, rows, reverse, backward) -> tuple:
    """What a captured graph depends on: the loop's kind and cell, its weights' addresses, shapes and dtypes, the
    carried state's and each row tensor's layout, which rows alias which, the direction and the device."""
    weights = tuple(None if w is None else (w.data_ptr(), tuple(w.shape), w.dtype) for w in loop.weights)
    carried = tuple((tuple(t.shape), t.dtype) for t in loop.carried)
    layout = tuple(None if t is None else (t.shape[0] > 0, tuple(t.shape[1:]), t.dtype) for t in rows)
    aliases = tuple(next(j for j, u in enumerate(rows) if u is t) for t in rows)
    return (type(loop).__name__, loop.cell, backward, reverse, weights, carried, layout, aliases, loop.device)


class _Entry:
    """A loop on fixed buffers, and its graphs per chunk length, captured on first use."""

    def __init__(self, loop, rows, reverse, backward, batch):
        self.loop = loop.on_own_state()
        self.reverse, self.backward, self.batch = reverse, backward, batch
        widths = sum(t[:1].numel() * t.element_size() for t in _distinct(rows) if t is not None and t.shape[0])
        self.longest = next((n for n in CHUNK_STEPS if n * batch * widths <= CHUNK_BYTES), 1)
        buffers = {}
        for t in _distinct(rows):
            if t is not None:
                length = self.longest * batch if t.shape[0] else 0
                buffers[id(t)] = t.new_empty(length, *t.shape[1:])
        self.rows = [None if t is None else buffers[id(t)] for t in rows]
        present = [i for i, t in enumerate(rows) if t is not None and t.shape[0]]
        first = {id(rows[i]): i for i in reversed(present)}
        self.inputs = [i for i in present if i in loop.INPUTS and first[id(rows[i])] == i]
        self.outputs = [i for i in present if i not in loop.INPUTS and first[id(rows[i])] == i]
        self.nbytes = sum(b.numel() * b.element_size() for b in buffers.values())
        self.pool = new_pool(loop.device)
        self.graphs = {}

    def graph(self, length: int):
        if length not in self.graphs:
            count = length * self.batch
            steps = time_steps(None, count, self.batch, self.reverse)
            steps = steps[::-1] if self.backward else steps
            views = [None if b is None else b[:count] for b in self.rows]
            carried = [t.clone() for t in self.loop.carried]  # the warm-up before capture runs the loop once
            self.graphs[length] = capture(lambda: self.loop(steps, *views), self.pool)
            for static, kept in zip(self.loop.carried, carried, strict=True):
                static.copy_(kept)
        return self.graphs[length]


def _distinct(tensors):
    seen = []
    for t in tensors:
        if t is not None and all(t is not u for u in seen):
            seen.append(t)
    return seen


def new_pool(device: torch.device):
    """A memory pool that an entry's graphs share."""
    with torch.cuda.device(device):
        return torch.cuda.graph_pool_handle()


def capture(body, pool):
    """`body`'s launches as a CUDA graph. It runs once first, on a side stream, outside the capture: Triton compiles
    its kernels and cuBLAS makes its handle and workspace there, which must not happen while capturing."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        body()
    return graph


class WholeCalls:
    """A driver whose calls replay a CUDA graph of one whole call of a compiled driver's op ("cuda": the C++ step
    loop, whose host time per step, 21-44 us on the H200, is several times its GPU time).

    Its state is the op's own (c in fp32 for fp16/bf16 included), so a call is captured whole, not chunk by chunk: one
    graph per call signature (the shapes, dtypes and values of the arguments, the batch sizes of packed input, the
    weights' addresses), captured the second time a signature comes, so that calls whose length changes from call to
    call run plainly instead of capturing a graph each. Outputs are copied out of the graph's buffers per call."""

    # The weights' positions in the ops' arguments (read where they are, keyed by address); the other tensors are
    # copied in.
    FORWARD_WEIGHTS = (4, 5, 6, 7, 8)
    BACKWARD_WEIGHTS = (7, 8, 9)

    def __init__(self, ops):
        self.ops = ops

    def sequence_forward(self, *arguments, zoneout=None):
        return _whole_call(self.ops.sequence_forward, (*arguments, zoneout), self.FORWARD_WEIGHTS)

    def sequence_backward(self, *arguments, zoneout=None):
        return _whole_call(self.ops.sequence_backward, (*arguments, zoneout), self.BACKWARD_WEIGHTS)


MAX_CALLS = 8
_calls: OrderedDict = OrderedDict()


def _whole_call(op, arguments, weights):
    tensors = [a for a in arguments if isinstance(a, torch.Tensor)]
    if not replays(tensors[0].device, None):
        return op(*arguments)
    key = (str(op), tuple(_signature(a, index in weights) for index, a in enumerate(arguments)))
    call = _calls.get(key, _UNSEEN)
    if call is _UNSEEN:  # seen once: run plainly, capture if it comes again
        _calls[key] = None
        while len(_calls) > MAX_CALLS:
            _calls.popitem(last=False)
        return op(*arguments)
    if call is None:
        call = _calls[key] = _Call(op, arguments, weights)
    _calls.move_to_end(key)
    return call(arguments)


_UNSEEN = object()
_NOT_CAPTURABLE = object()


def _signature(argument, is_weight):
    if isinstance(argument, torch.Tensor):
        layout = (tuple(argument.shape), tuple(argument.stride()), argument.dtype, argument.device)
        return (*layout, argument.data_ptr()) if is_weight else layout
    return tuple(argument) if isinstance(argument, list) else argument


class _Call:
    def __init__(self, op, arguments, weights):
        self.op = op
        self.copied = [i for i, a in enumerate(arguments) if isinstance(a, torch.Tensor) and i not in weights]
        self.inputs = [a.clone() if i in self.copied else a for i, a in enumerate(arguments)]
        self.outputs = None
        self.graph = None

    def __call__(self, arguments):
        for index in self.copied:
            self.inputs[index].copy_(arguments[index])
        if self.graph is None:
            # A plain run gives this call's outputs and the buffers every replay writes into.
            self.outputs = self.op(*self.inputs)
            try:
                self.graph = capture(self._body, new_pool(self.inputs[1].device))
            except RuntimeError as error:  # e.g. a host synchronization inside the op: then it runs plainly
                self.graph = _NOT_CAPTURABLE
                warnings.warn(
                    f"fused_rnn: {self.op} cannot be captured as a CUDA graph, runs plainly: {error}", stacklevel=4
                )
        elif self.graph is _NOT_CAPTURABLE:
            return self.op(*arguments)
        else:
            self.graph.replay()
        return tuple(t.clone() for t in self.outputs)

    def _body(self):
        for buffer, result in zip(self.outputs, self.op(*self.inputs), strict=True):
            buffer.copy_(result)


def clear() -> None:
    """Drop every captured graph and its buffers."""
    _entries.clear()
    _calls.clear()
