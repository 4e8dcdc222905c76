"""Speed machinery of `modeling_scratch_gpt.py`, kept apart so that the model file reads as the book: a linear
layer that picks its inference kernel by timing the candidates where it runs, the same choice between sdpa and
eager attention for CPU training, and the output head's cross-entropy computed a chunk of rows at a time.

It travels with every checkpoint beside the model file (transformers copies a code file's relative imports),
so it imports only torch.
"""

import time

import torch
from torch import nn


def _onednn_linear():
    """oneDNN's linear kernel (the one torch.compile's CPU backend calls), if this torch build has it."""
    try:
        return torch.ops.mkldnn._linear_pointwise.default if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()
INFERENCE_ROWS = 64  # decoding-sized inputs, where the kernels differ most: they read every weight for few rows
TRIALS = 7  # timed calls of each candidate, after one untimed, before one is kept
MARGIN = 0.97  # another kernel replaces the plain one only if its typical time is at most 97% of the plain one's


def plain_linear(x, weight, bias):
    return nn.functional.linear(x, weight, bias)


def onednn_linear(x, weight, bias):
    return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")


def gemv_linear(x, weight, bias):
    """One row: a matrix-vector kernel, where the matrix-matrix one is slower on some CPUs (bf16 especially)."""
    row = x.reshape(-1)
    out = torch.mv(weight, row) if bias is None else torch.addmv(bias, weight, row)
    return out.view(*x.shape[:-1], -1)


def weight_first_linear(x, weight, bias):
    """A few rows: (weight @ x.T).T, the weight as the left operand, which some BLAS kernels stream once for
    all rows where `x @ weight.T` does not (bf16 on AMX CPUs: 1.6x); the result made contiguous again."""
    rows = x.reshape(-1, x.shape[-1])
    out = weight @ rows.T if bias is None else torch.addmm(bias[:, None], weight, rows.T)
    return out.T.contiguous().view(*x.shape[:-1], -1)


def candidates(dtype: torch.dtype, rows: int) -> list:
    """The kernels worth timing for inputs of `rows` rows of `dtype`; the plain one first."""
    kernels = [plain_linear]
    if _ONEDNN_LINEAR is not None and dtype in (torch.float32, torch.bfloat16):
        kernels.append(onednn_linear)
    kernels.append(gemv_linear if rows == 1 else weight_first_linear)
    return kernels


class KernelChoice:
    """The kernel for one kind of call (sizes, dtype, rows), chosen by timing real calls on this machine.

    The first calls go to each candidate in turn, `TRIALS` + 1 each, timed (CPU kernels return when done) but
    for the first, which pays one-time costs (oneDNN builds its primitive); then the fastest is kept (`_kept`), the
    plain kernel unless another takes at most `MARGIN` of its time. A kernel's time is the lower quartile of its
    calls: work elsewhere on the machine only ever adds time, and on a busy one a call can take 3x another of
    the same kernel (the median of 5 calls kept a 1.6x slower kernel in 3 runs of 5). Measured on the calls
    themselves, so the weights come from wherever decoding leaves them (caches, memory), as they do
    afterwards: a kernel that wins on one CPU and loses on another is kept only where it wins.
    """

    def __init__(self, kernels: list):
        self.times = {kernel: [] for kernel in kernels}
        self.chosen = None if len(kernels) > 1 else kernels[0]
        self._turn = 0

    def __call__(self, x, weight, bias):
        if self.chosen is not None:
            return self.chosen(x, weight, bias)
        kernels = list(self.times)
        kernel = kernels[self._turn % len(kernels)]
        self._turn += 1
        start = time.perf_counter()
        out = kernel(x, weight, bias)
        self.times[kernel].append(time.perf_counter() - start)
        if self._turn == (TRIALS + 1) * len(kernels):
            self.chosen = _kept(self.times, plain_linear)
        return out


def _kept(times: dict, plain):
    """Of candidates timed `TRIALS` + 1 times each (the first call untimed: it pays one-time costs), the fastest by
    its lower quartile; the plain one unless another takes at most `MARGIN` of its time."""
    typical = {candidate: sorted(t[1:])[TRIALS // 4] for candidate, t in times.items()}
    fastest = min(typical, key=typical.get)
    return fastest if typical[fastest] <= MARGIN * typical[plain] else plain


_CHOICES: dict[tuple, KernelChoice] = {}


class Linear(nn.Linear):
    """`nn.Linear` whose decoding-sized inference (up to `INFERENCE_ROWS` rows, no gradient, CPU, no autocast)
    runs on the kernel that is fastest on this machine for its sizes, dtype and rows (`KernelChoice`): oneDNN's
    or a matrix-vector kernel where they beat the default, the default otherwise. The same function, rounding
    aside; a subclass, so PEFT and every tool looking for `nn.Linear` still finds one.
    """

    def forward(self, x):
        weight = self.weight  # one module attribute lookup: this runs 50 times per decoded token
        if (
            x.is_cpu
            and x.dtype is weight.dtype
            and x.numel() <= INFERENCE_ROWS * self.in_features
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            rows = x.numel() // self.in_features
            key = (self.in_features, self.out_features, x.dtype, rows, self.bias is not None)
            choice = _CHOICES.get(key)
            if choice is None:
                choice = _CHOICES[key] = KernelChoice(candidates(x.dtype, rows))
            return choice(x, weight, self.bias)
        return nn.functional.linear(x, weight, self.bias)


SCORES_TIMED = 2**22  # eager attention is timed against sdpa only where its scores (batch x heads x queries x keys)
# hold at most this many numbers (16 MB in fp32): beyond, they cost memory that sdpa's tiled kernel never allocates.
_TRAINING_ATTENTION: dict[tuple, str] = {}


def training_attention(module, query, key, value, candidates: dict) -> str:
    """The name of whichever attention function of `candidates` ("sdpa", the default, first; then "eager") computes
    this attention with its backward faster on this CPU. sdpa's fused CPU kernel is not always the faster: on the
    AMX Xeon of the benchmark its bf16 backward takes 4 ms for 12 sequences x 4 heads x 64 tokens where eager's
    takes 1 (fp32: 1 ms both), and from 1024 tokens it is 2.6x faster than eager's.

    Timed once per process for each dtype, head size and size class (the next power of two of batch x heads, of
    queries and of keys), on the call's own tensors, detached: the model's gradients and the random state are
    untouched. Each candidate runs `TRIALS` + 1 times, the choice as `KernelChoice` makes it (`_kept`)."""
    b, h, n, d = query.shape
    if b * h * n * key.shape[2] > SCORES_TIMED:
        return "sdpa"
    size = (query.dtype, d, *(1 << (x - 1).bit_length() for x in (b * h, n, key.shape[2])))
    if size not in _TRAINING_ATTENTION:
        inputs = [t.detach().requires_grad_() for t in (query, key, value)]
        times = {name: [] for name in candidates}
        # Under hooks of its own that keep saved tensors as they are: the caller's (activation checkpointing's,
        # which counts what a layer saves) would take the timing's tensors for the layer's.
        with torch.autograd.graph.saved_tensors_hooks(lambda saved: saved, lambda saved: saved):
            for _ in range(TRIALS + 1):
                for name, attention in candidates.items():
                    start = time.perf_counter()
                    context, _ = attention(module, *inputs, None, scaling=module.scaling, dropout=0.0)
                    torch.autograd.grad(context, inputs, torch.ones_like(context))
                    times[name].append(time.perf_counter() - start)
        _TRAINING_ATTENTION[size] = _kept(times, "sdpa")
    return _TRAINING_ATTENTION[size]


def _keep_mask(x: torch.Tensor, dropped: int) -> torch.Tensor:
    """True where a uniform 16-bit draw is not among the lowest `dropped` values: four draws from each
    64-bit random number, a quarter of the random numbers `bernoulli_` draws."""
    draws = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)
    return draws[: x.numel()].view(x.shape) >= dropped - 2**15


# A custom op, so that torch.compile calls it as it is instead of tracing it into its own random numbers
# (2.6x slower on the CPU). Its input is the tensor to drop from (a different one for every dropout), so that
# no two masks of a graph are merged as equal; the compiler never recomputes a custom op in backward. Each
# import of this file (the installed package's, a checkpoint's) registers it again, the same function.
keep_mask = torch.library.custom_op("scratch_gpt::keep_mask", _keep_mask, mutates_args=())
keep_mask.register_fake(lambda x, dropped: torch.empty(x.shape, dtype=torch.bool, device=x.device))  # contiguous


def dropout16(x, p: float, training: bool = True):
    """`nn.functional.dropout` with, on the CPU, a mask drawn four at a time (`keep_mask`: a 2 x 12 x 256 x 256
    attention mask in 1.5 ms instead of `bernoulli_`'s 9 on the AMX Xeon of the benchmark; the same generator
    behind both), eager and compiled alike: the same seed gives the same masks. The drop probability is
    rounded to a multiple of 2**-16 (0.1 -> 0.100006) and the kept values scaled by the inverse of the keep
    probability actually used, so the expected output is exactly the input. Elsewhere
    `nn.functional.dropout`."""
    dropped = round(p * 2**16)  # drop where a uniform 16-bit draw falls in the lowest `dropped` values
    if not (training and x.is_cpu and 0 < dropped < 2**16):
        return nn.functional.dropout(x, p, training)
    keep = keep_mask(x.detach(), dropped)
    # `where` saves the boolean mask for backward, as native dropout does; a product would convert it to x's dtype
    # in both passes.
    return torch.where(keep, x, 0).mul_(2**16 / (2**16 - dropped))


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout16`: a subclass, so that tools looking for `nn.Dropout` still find it."""

    def forward(self, x):
        return super().forward(x) if self.inplace else dropout16(x, self.p, self.training)


class _HeadCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` against `targets`, a chunk of rows at a time, so the (tokens x
    vocabulary) logits never exist whole: at GPT-2's shape they, their log-softmax and their gradient
    are the largest tensors of a training step. Each chunk's gradients are computed while its logits
    are at hand and kept for the backward pass; the matmuls are the same three as the plain path's.

    Under autocast the three matmuls run in the autocast dtype (the head's weight cast once, not once per
    chunk) and the log-softmax in fp32, as autocast runs `linear` and `cross_entropy`. The weight's gradient
    is summed over chunks by the matmul itself (`addmm_`, fp32 inside, rounded once per chunk): at 32 chunks
    of bf16 it is 0.7% from fp32, against 0.25% for one product; an fp32 sum would double its cost."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, normaliser, chunk_rows):
        train_weight = ctx.needs_input_grad[1]  # a frozen head (LoRA, last blocks) needs no weight gradient
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):
            matrix, loss = weight.to(dtype), torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden, grad_weight = torch.empty_like(hidden), None
            for start in range(0, hidden.shape[0], chunk_rows):
                rows, target = hidden[start : start + chunk_rows].to(dtype), targets[start : start + chunk_rows]
                # Masks, not branches, so that torch.compile traces it whole.
                scored = (target != -100)[:, None].to(dtype)  # (chunk, 1): 0 for ignored rows
                picked = target.clamp(min=0)[:, None]
                logits = rows @ matrix.T  # (chunk, vocab)
                log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                loss -= (log_probs.gather(1, picked) * scored).sum()
                del log_probs
                # d loss / d logits = (softmax - one-hot) for scored rows. The softmax kernel computes in
                # fp32 and writes the matmul dtype: one pass, where exp and a cast of the log-softmax are
                # two over an fp32 matrix. The mask is applied to the small factors of each product instead
                # of to this (chunk x vocabulary) matrix, and the division by the normaliser, in fp32, in
                # backward.
                grad_logits = torch.softmax(logits, dim=-1)
                one_row_each = torch.arange(len(picked), device=picked.device)[:, None]
                grad_logits[one_row_each, picked] -= 1
                grad_hidden[start : start + chunk_rows] = (grad_logits @ matrix) * scored
                if train_weight:
                    if grad_weight is None:
                        grad_weight = grad_logits.T @ (rows * scored)
                    else:
                        grad_weight.addmm_(grad_logits.T, rows * scored)
        ctx.save_for_backward(grad_hidden, grad_weight, normaliser)
        return loss / normaliser

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, normaliser = ctx.saved_tensors
        scale = grad_loss / normaliser  # fp32, applied as it is: a bf16 tensor times an fp32 scalar
        if grad_weight is not None:
            # In place: no second vocabulary-sized tensor. A second backward through the same graph
            # (retain_graph) is refused by autograd's check of the saved tensor's version.
            # In the matmul dtype; autograd casts it to the weight's.
            grad_weight.mul_(scale)
        return grad_hidden * scale, grad_weight, None, None, None


def head_cross_entropy(hidden, weight, labels, num_items_in_batch=None, chunk_rows: int = 256):
    """transformers' causal LM loss (labels shifted left, -100 ignored, summed over `num_items_in_batch`
    when Trainer gives it, else averaged) of the head `weight` on `hidden`, without the full logits."""
    targets = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        normaliser = (targets != -100).sum().float()
    else:
        normaliser = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=hidden.device)
    return _HeadCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, normaliser, chunk_rows)


class PackedRow:
    """One packed row (several sequences one after another, as `DataCollatorWithFlattening` sends them) laid out
    for attention as a batch of its sequences, right-padded to a common width (a multiple of 8, so that batches
    repeat a few shapes). Attention over that batch is plain causal attention: a real token never sees the
    padding after it, nor another sequence; the padding's own outputs are dropped when packing back. It costs
    what a padded batch's attention costs, in one call, where a mask over the whole row costs its square."""

    def __init__(self, lengths: list[int], device):
        self.count, self.width = len(lengths), -(-max(lengths) // 8) * 8
        self.index = torch.cat([torch.arange(n, device=device) + i * self.width for i, n in enumerate(lengths)])

    def unpack(self, states: torch.Tensor) -> torch.Tensor:
        """(1, heads, tokens, d) -> (sequences, heads, width, d)."""
        heads, size = states.shape[1], states.shape[3]
        batch = states.new_zeros(heads, self.count * self.width, size)
        batch[:, self.index] = states[0]
        return batch.view(heads, self.count, self.width, size).transpose(0, 1)

    def pack(self, context: torch.Tensor) -> torch.Tensor:
        """(sequences, width, heads, d) -> (1, tokens, heads, d)."""
        return context.reshape(self.count * self.width, *context.shape[2:])[self.index].unsqueeze(0)
