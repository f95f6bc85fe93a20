"""Output sensitivity: how strongly the denoiser's output responds to each candidate layer's output.

The local tier measures each layer's own output error ``||y_q - y||^2``; what matters is the error it causes
in the denoiser's output. To second order (Gauss-Newton) a perturbation ``d`` of a layer's output ``y``
moves the denoiser's output by ``||J d||^2`` with ``J = df/dy``; for an error spread evenly over ``y``'s
``n`` elements that is ``Tr(J^T J) / n * ||d||^2`` in expectation. Hutchinson's estimator on the output side,
``Tr(J^T J) = E_u ||J^T u||^2`` for Rademacher ``u`` over ``f``, gives it for every layer at once from one
backward pass per denoiser call.

The profiler records each call's inputs during its full-precision run and, after the run, replays them with
gradients: per (layer, step) it stores ``g2 = sum ||J^T u||^2`` and ``n = sum of the output's elements``. The
``gn`` metric (``Profile.metric("gn")``) is the layer's measured output error times ``g2 / n``: the local
error carried to the denoiser's output. The model is left exactly as it was (no gradients kept,
``requires_grad`` flags restored).
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref

import numpy as np
import torch
import torch.utils.checkpoint
from diffusers.hooks import HookRegistry, ModelHook

from mpsearch.errors import ProfileError, UsageError
from mpsearch.runtime.steps import acquire_step_state, first_tensor, register_hook, release_step_state, unregister_hook

__all__ = ["CallRecorder", "block_checkpointing", "held_activations", "hutchinson", "output_sensitivity"]


class _Copies:
    """Copies of the tensors of recorded calls, one per tensor object and version: the conditioning that a
    pipeline passes unchanged at every step (a text encoder's states: 39 MB per call for PixArt-Sigma with 4
    prompts) is copied once, not once per step. A copy is reused only while its source is alive and unmodified
    (a weak reference and its version counter, so an id taken by a new tensor is never mistaken) and while a
    recorded call still holds the copy (also a weak reference: clearing the calls frees it)."""

    def __init__(self):
        self._memo: dict[int, tuple[weakref.ref, int, weakref.ref]] = {}

    def __call__(self, v):
        if not isinstance(v, torch.Tensor):
            return v
        hit = self._memo.get(id(v))
        if hit is not None and hit[0]() is v and hit[1] == v._version:
            copy = hit[2]()
            if copy is not None:
                return copy
        copy = v.detach().clone()
        try:
            self._memo[id(v)] = (weakref.ref(v), v._version, weakref.ref(copy))
        except TypeError:  # a tensor without weak references: copied every time
            pass
        if len(self._memo) > 64:  # drop the entries of dead sources or copies
            self._memo = {k: e for k, e in self._memo.items() if e[0]() is not None and e[2]() is not None}
        return copy


class CallRecorder(ModelHook):
    """Keeps a copy of every ``every``-th denoiser call's inputs and the step the denoiser's step state assigns
    to it: ``calls`` is a list of ``(step, args, kwargs)``; ``paused`` stops recording.

    ``with CallRecorder().install(denoiser) as rec:`` registers it as a named hook inside the step-state hook
    (so each call's step is set before it records) and takes both off on exit.
    """

    HOOK = "mpsearch_call_recorder"

    def __init__(self, every: int = 1):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"every must be a positive integer (record every n-th call), got {every!r}")
        self.every = every
        self.calls: list[tuple[int, tuple, dict]] = []
        self.paused = False
        self.state = None  # the denoiser's StepState while installed
        self._copies = _Copies()  # one copy of an input passed unchanged at several calls
        self._seen = 0
        self._denoiser = None

    def pre_forward(self, module, *args, **kwargs):
        if not self.paused:
            if self._seen % self.every == 0:
                step = self.state.step if self.state is not None else len(self.calls)
                copy = self._copies
                self.calls.append((int(step), tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}))
            self._seen += 1
        return args, kwargs

    def install(self, denoiser: torch.nn.Module) -> CallRecorder:
        """Register on ``denoiser`` (one recorder per denoiser at a time); ``remove()`` takes it off."""
        registry = HookRegistry.check_if_exists_or_initialize(denoiser)
        if registry.get_hook(self.HOOK) is not None:
            raise UsageError(f"a call recorder is already installed on {type(denoiser).__name__}; remove it first")
        register_hook(denoiser, self, self.HOOK)  # inside accelerate's offload hook, if any
        self._denoiser = denoiser
        self.state = acquire_step_state(denoiser)  # after registering: the step hook runs first
        return self

    def remove(self) -> None:
        """Take the recorder (and its use of the step state) off the denoiser. Safe to call twice."""
        if self._denoiser is None:
            return
        release_step_state(self._denoiser)
        unregister_hook(self._denoiser, self.HOOK)
        self._denoiser, self.state = None, None

    def __enter__(self) -> CallRecorder:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _rademacher(y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """A Rademacher vector over ``y`` (drawn on the CPU from ``generator``), already multiplied by the scale it
    returns: 2**-10 for float16 outputs (gradients are linear in ``u``; the caller divides squared norms by the
    scale squared, exact for a power of two), else 1."""
    scale = 2.0 ** -10 if y.dtype == torch.float16 else 1.0
    u = (torch.randint(0, 2, y.shape, generator=generator) * 2 - 1).to(device=y.device, dtype=y.dtype)
    return u * scale, scale


def hutchinson(y: torch.Tensor, tensors, *, samples: int, generator: torch.Generator) -> np.ndarray:
    """(len(tensors),) float64: ``sum over samples of ||J_i^T u||^2`` for Rademacher ``u`` over ``y`` and
    ``J_i = dy/d tensors[i]``, one backward pass per sample (``E ||J_i^T u||^2 = Tr(J_i^T J_i)``). NaN/inf are
    returned as they come, for the caller to judge."""
    out = np.zeros(len(tensors))
    for k in range(samples):
        u, scale = _rademacher(y, generator)
        grads = torch.autograd.grad(y, list(tensors), grad_outputs=u, retain_graph=k < samples - 1,
                                    allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                out[i] += float(g.double().square().sum()) / scale ** 2
    return out


class _GradNorms:
    """Squared gradient norms of tensors registered during a forward pass, each taken in a hook as the backward
    pass reaches it (so no gradient outlives its use, and no output is kept: the hook lives on the graph). The
    same Rademacher draws and sums as :func:`hutchinson`."""

    def __init__(self):
        self.layers: list[int] = []  # per registered tensor, in forward order: its layer,
        self.sizes: list[int] = []   # its number of elements,
        self.sums: list[float] = []  # and its summed squared gradient norm (unscaled)
        self.recording = True

    def add(self, layer: int, t: torch.Tensor) -> None:
        if not self.recording:  # a checkpointed block recomputing its forward during backward
            return
        k = len(self.sums)
        self.layers.append(layer)
        self.sizes.append(t.numel())
        self.sums.append(0.0)

        def hook(g):
            self.sums[k] += float(g.double().square().sum())
        t.register_hook(hook)

    def backward(self, y: torch.Tensor, leaves, *, samples: int, generator: torch.Generator) -> np.ndarray:
        """Backward passes from ``y`` to ``leaves``, one per Rademacher sample; the registered tensors' sums."""
        self.recording = False
        scale = 1.0
        for k in range(samples):
            u, scale = _rademacher(y, generator)
            torch.autograd.grad(y, list(leaves), grad_outputs=u, retain_graph=k < samples - 1, allow_unused=True)
        return np.asarray(self.sums, dtype=np.float64) / scale ** 2


def _checkpointing_share(share: float):
    """diffusers' ``gradient_checkpointing_func`` that checkpoints ``share`` of the blocks a forward pass calls,
    evenly spread (call k is checkpointed when ``floor((k + 1) * share) > floor(k * share)``), and runs the
    others as they are; and a function that restarts the count (at each forward pass of the denoiser)."""
    count = [0]

    def fn(module, *args):
        k = count[0]
        count[0] += 1
        if math.floor((k + 1) * share) > math.floor(k * share):
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)
        return module(*args)

    def restart(*_):
        count[0] = 0
    return fn, restart


@contextlib.contextmanager
def block_checkpointing(denoiser: torch.nn.Module, enable: bool | float):
    """Inside: the denoiser's own (diffusers') activation checkpointing, non-reentrant, so a backward pass keeps
    only each block's inputs and recomputes one block at a time; outside, as it was. ``enable``: True (every
    block), False, or the share of blocks in (0, 1] to checkpoint, evenly spread (half the blocks: about
    half the activations saved, for half the recomputation). A denoiser that has none is a UsageError."""
    if not enable:
        yield
        return
    if not getattr(denoiser, "_supports_gradient_checkpointing", False):
        raise UsageError(f"{type(denoiser).__name__} has no activation checkpointing, so the replay cannot "
                         "checkpoint its blocks; profile without --replay-checkpoint (or with --replay-batch 1 "
                         "for less memory)")
    if denoiser.is_gradient_checkpointing:  # the user's own checkpointing is on: leave it as it is
        yield
        return
    handle = None
    if enable is True or float(enable) >= 1:
        denoiser.enable_gradient_checkpointing()  # diffusers' default: torch.utils.checkpoint, use_reentrant=False
    else:
        fn, restart = _checkpointing_share(float(enable))
        handle = denoiser.register_forward_pre_hook(restart)
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=fn)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        denoiser.disable_gradient_checkpointing()


def replayed_steps(steps: int, replay_steps: int | None) -> list[int]:
    """The steps whose calls are replayed: all, or ``replay_steps`` of them evenly spread (first and last
    included when two or more)."""
    if replay_steps is None or replay_steps >= steps:
        return list(range(steps))
    if replay_steps == 1:
        return [(steps - 1) // 2]
    return sorted({int(round(v)) for v in np.linspace(0, steps - 1, replay_steps)})


def _interpolate(out: np.ndarray, kept: list[int]) -> np.ndarray:
    """Fill the steps not in ``kept`` by linear interpolation between the nearest kept steps (constant
    beyond the ends), per layer and column."""
    steps = out.shape[1]
    grid = np.arange(steps)
    for i in range(out.shape[0]):
        for c in range(out.shape[2]):
            out[i, :, c] = np.interp(grid, kept, out[i, kept, c])
    return out


def _batch_size(args, kwargs) -> int | None:
    """The batch size of a recorded denoiser call: the leading dim of its first tensor argument."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return int(v.shape[0])
    return None


def _batch_rows(v, batch: int, cut):
    """``v`` with every tensor whose leading dim is ``batch`` replaced by ``cut(tensor)`` (in dicts, lists and
    tuples too); anything else (a scalar timestep, position ids) as it is."""
    if isinstance(v, torch.Tensor):
        return cut(v) if v.dim() >= 1 and v.shape[0] == batch else v
    if isinstance(v, dict):
        return {k: _batch_rows(x, batch, cut) for k, x in v.items()}
    if type(v) in (list, tuple):
        return type(v)(_batch_rows(x, batch, cut) for x in v)
    return v


def _rows(v, lo: int, hi: int, batch: int):
    """``v`` with every batch-sized tensor cut to rows ``lo:hi`` (:func:`_batch_rows`)."""
    return _batch_rows(v, batch, lambda t: t[lo:hi])


def _pick(v, idx: torch.Tensor, batch: int):
    """``v`` with every batch-sized tensor cut to rows ``idx`` (:func:`_batch_rows`)."""
    return _batch_rows(v, batch, lambda t: t[idx.to(t.device)])


def row_subset(args, kwargs, rows: int | None, generator: torch.Generator):
    """``(args, kwargs, weight)``: a denoiser call cut to ``rows`` of its batch rows drawn uniformly at random
    without replacement (None, or a batch of at most ``rows``: the call itself, weight 1), and the weight
    (batch / rows) that makes its sums an unbiased estimate of the whole call's: the denoiser treats the rows
    of a batch independently, so the whole call's ``Tr(J^T J)`` is the sum of its rows'."""
    batch = _batch_size(args, kwargs)
    if rows is None or batch is None or batch <= rows:
        return args, kwargs, 1.0
    idx = torch.randperm(batch, generator=generator)[:rows].sort().values
    return _pick(args, idx, batch), _pick(kwargs, idx, batch), batch / rows


def micro_batches(args, kwargs, size: int | None):
    """``(args, kwargs)`` of a denoiser call cut into calls of at most ``size`` batch rows (None: the call
    itself). The denoiser treats the rows of a batch independently, so ``Tr(J^T J)`` of the whole call is the
    sum over its micro-batches, for a fraction of the backward pass's memory. With one Rademacher sample per
    call (the profiler's) the micro-batches draw exactly the whole call's vector, row block by row block."""
    batch = _batch_size(args, kwargs)
    if size is None or batch is None or batch <= size:
        return [(args, kwargs)]
    return [(_rows(args, lo, min(lo + size, batch), batch), _rows(kwargs, lo, min(lo + size, batch), batch))
            for lo in range(0, batch, size)]


def _replays(calls, rows, generator, batch):
    """``(step, args, kwargs, weight)`` of each micro-batch to replay: each call's row subset, cut up."""
    for step, args, kwargs in calls:
        args, kwargs, weight = row_subset(args, kwargs, rows, generator)
        for a, k in micro_batches(args, kwargs, batch):
            yield step, a, k, weight


def _kept_calls(calls, steps: int, replay_steps: int | None):
    """(the replayed steps, the calls of those steps): :func:`replayed_steps` of those the calls cover."""
    kept = replayed_steps(steps, replay_steps)
    if len(kept) < steps:
        seen = {int(step) for step, _, _ in calls}
        kept = [s for s in kept if s in seen] or sorted(seen)[:1]
        keep = set(kept)
        calls = [c for c in calls if c[0] in keep]
    return kept, calls


class _Graph:
    """The replay's view of a forward pass: the candidate outputs' gradient sums (``norms``) and the leaves
    made for candidate inputs that were not on the graph (``leaves``); ``restart()`` before each call."""

    def __init__(self):
        self.norms = _GradNorms()
        self.leaves: list[torch.Tensor] = []

    def restart(self) -> None:
        self.norms = _GradNorms()
        self.leaves.clear()


@contextlib.contextmanager
def _gradient_graph(denoiser: torch.nn.Module, modules):
    """Inside: a forward pass of ``denoiser`` with gradients enabled puts every candidate layer's (``modules``)
    output on the graph and registers it with the yielded :class:`_Graph`, and no parameter takes part in the
    graph (so autograd keeps no layer inputs for weight gradients, about half of a backward pass's memory); a
    candidate whose input is not on the graph yet gets it as a leaf. Gradients with respect to the outputs are
    unchanged. On exit the hooks are removed and the ``requires_grad`` flags restored."""
    flags = {name: p.requires_grad for name, p in denoiser.named_parameters()}
    graph = _Graph()

    def on_graph(module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad:
            leaf = x.detach().requires_grad_(True)  # also when recomputing: the same graph as the forward's
            if graph.norms.recording:
                graph.leaves.append(leaf)
            return (leaf, *args[1:])
        return None

    def keep(i):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                graph.norms.add(i, output)
        return hook

    handles = [m.register_forward_pre_hook(on_graph) for m in modules]
    handles += [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        for p in denoiser.parameters():
            p.requires_grad_(False)
        yield graph
    finally:
        for h in handles:
            h.remove()
        # by name on the parameters the model holds now: accelerate's offload hooks replace Parameter objects
        for name, p in denoiser.named_parameters():
            if name in flags:
                p.requires_grad_(flags[name])


def held_activations(denoiser: torch.nn.Module, calls, modules, steps: int, *, seed: int = 0,
                     replay_steps: int | None = None, batch: int | None = None, rows: int | None = None
                     ) -> tuple[int, float]:
    """``(bytes, seconds)``: what the first micro-batch :func:`output_sensitivity` would replay (same
    arguments; without checkpointing) holds for its backward pass, and the seconds of its forward pass,
    measured by running that forward pass with gradients while the storages of the tensors autograd saves are
    counted (each once), not kept: the measurement allocates no more than a forward pass without gradients.
    The auto mode predicts a replay's peak with it before running one that might not fit."""
    calls = _kept_calls(calls, steps, replay_steps)[1]
    row_gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    first = next(_replays(calls, rows, row_gen, batch), None)
    if first is None:
        return 0, 0.0
    _, args, kwargs, _ = first
    params = {p.untyped_storage().data_ptr() for p in denoiser.parameters()}
    seen: dict[int, weakref.ref] = {}
    total = [0]

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:  # a weight is held anyway
            ref = seen.get(ptr)
            if ref is None or ref() is None:  # a storage not counted yet (its address may be a freed one's)
                seen[ptr] = weakref.ref(storage)  # alive as long as any tensor holds the storage
                total[0] += storage.nbytes()
        return None  # not kept: no backward pass follows

    def unpack(_):
        raise ProfileError("held_activations measures a forward pass only; nothing may be unpacked")

    t0 = time.perf_counter()
    with _gradient_graph(denoiser, modules), torch.enable_grad(), \
            torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = first_tensor(denoiser(*args, **kwargs))
        del y
    return int(total[0]), time.perf_counter() - t0


def output_sensitivity(denoiser: torch.nn.Module, calls, modules, steps: int, *, samples: int = 1,
                       seed: int = 0, replay_steps: int | None = None, batch: int | None = None,
                       checkpoint: bool | float = False, rows: int | None = None) -> np.ndarray:
    """(L, steps, 2): per layer (``modules``, in order) and step, ``sum ||J^T u||^2`` and the number of
    output elements, over ``calls`` (``(step, args, kwargs)`` as :class:`CallRecorder` keeps them) and
    ``samples`` Rademacher vectors per call.

    ``replay_steps``: replay only the calls of that many steps (:func:`replayed_steps`) and interpolate the
    other steps' values linearly between them (a fraction of the cost, for a quantity that varies slowly
    over steps). ``batch``: replay each call in micro-batches of at most that many rows
    (:func:`micro_batches`; the same expectation, a fraction of the memory). ``checkpoint``: checkpoint the
    denoiser's blocks during the replay (:func:`block_checkpointing`: the same numbers, the activations of one
    block instead of all, for about one more forward pass per call; a share in (0, 1]: that share of the
    blocks, for that share of the saving and of the cost). ``rows``: replay only that many rows of each
    call's batch, drawn at random (:func:`row_subset`), their sums scaled up to the whole batch: an unbiased
    estimate for ``rows / batch`` of the replay's time (1 with a guidance batch of 2: one half, drawn per call)."""
    out = np.zeros((len(modules), steps, 2))
    if not calls:
        return out
    kept, calls = _kept_calls(calls, steps, replay_steps)
    gen = torch.Generator().manual_seed(int(seed))
    row_gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)  # the row draws, apart from u's
    with _gradient_graph(denoiser, modules) as graph, torch.enable_grad(), \
            block_checkpointing(denoiser, checkpoint):
        for step, args, kwargs, weight in _replays(calls, rows, row_gen, batch):
            graph.restart()
            y = first_tensor(denoiser(*args, **kwargs))
            if y is None or not y.requires_grad or not 0 <= step < steps:
                continue
            norms = graph.norms
            g2 = norms.backward(y, graph.leaves, samples=samples, generator=gen)
            for i, n, v in zip(norms.layers, norms.sizes, g2, strict=True):
                if not math.isfinite(v):
                    raise ProfileError(
                        f"the output-sensitivity pass got a gradient that is not finite at step {step} "
                        f"(layer {i}, {y.dtype}); profile the model in float32 or bfloat16")
                out[i, step, 0] += v * weight
                out[i, step, 1] += n * samples * weight
            graph.leaves.clear()
            del y
    out[..., 0] /= samples
    out[..., 1] /= samples
    if replay_steps is not None and len(kept) < steps:
        out = _interpolate(out, [s for s in kept if 0 <= s < steps])
    return out
