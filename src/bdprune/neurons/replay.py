"""Predictions with neurons silenced, re-running only the network after the first silenced layer.

The rules that measure what pruning does (BNP's guard: one prediction pass per suspect; EP's consensus: one
per pruning count tried; the held-out check) run the model many times on the same samples with different
neurons silenced. Everything before the first silenced layer computes the same thing every time, so it is
computed once: `Replay` caches, on its samples, the input of the block that holds the first silenced layer
(a module whose parent is an `nn.Sequential`, e.g. `layer4.1` of a ResNet) and replays the model from there.

How, without rewriting the model or knowing its code: during a replay every module that finished before the
block starts (the stem, the earlier stages) is stubbed to return zeros of its recorded shape, and a
forward pre-hook hands the block its cached input; the model's own `forward` runs unchanged around them. A
block qualifies only if replaying the unpruned model from it gives the reference logits (allclose, same
argmax): one that is not the only path from the earlier layers (a skip connection around it) fails that check
and the next block up is used, or the whole model. So the predictions are those of a full forward pass.

Memory: the cached inputs of the blocks used, N x (their input size) floats, at most `max_bytes` in all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..data.batches import iterate_batches
from ..data.imageset import ImageSet
from ..models.device import evaluating, model_device
from .layers import NeuronLayer
from .mask import ChannelMask, masked, silence_

MAX_BYTES = 512 * 2**20  # cached block inputs, all blocks together


class Replay:
    """Logits of `model` on `data` with any neurons of `layers` silenced, replayed from the first silenced block.

    Args:
        model: the network (left as it was after every call).
        data: the samples, fixed for the replay's lifetime.
        layers: the neuron layers masks may name, in forward order (as `find_neuron_layers` returns them).
        batch_size: samples per forward pass.
        max_bytes: memory for cached block inputs; beyond it, blocks are not cached (full passes instead).
    """

    def __init__(
        self, model: nn.Module, data: ImageSet, layers: list[NeuronLayer], *, batch_size: int = 256,
        max_bytes: int = MAX_BYTES,
    ) -> None:  # fmt: skip
        self.model, self.data, self.layers, self.batch_size, self.max_bytes = model, data, layers, batch_size, max_bytes
        self.order = {l.name: i for i, l in enumerate(layers)}
        self.modules = dict(model.named_modules())
        self.inputs: dict[str, list[torch.Tensor]] = {}  # block -> cached input batches
        self.entry: dict[str, str | None] = {}  # layer -> the block it is replayed from (None: full passes)
        self.shapes: dict[str, tuple[int, int]] = {}  # module -> (first start, last end) in the forward pass
        self.outputs: dict[str, torch.Tensor] = {}  # module -> its output on one sample (shape, dtype, device)
        self.stub_outputs: dict[str, dict[int, torch.Tensor]] = {}  # module -> batch size -> what its stub returns
        self.reference = self._full()  # (N, K) logits of the unpruned model

    # -- public -------------------------------------------------------------------------------------------------
    def logits(self, mask: ChannelMask, silence: str = "bn") -> torch.Tensor:
        """(N, K) logits on the CPU with the neurons of `mask` silenced (`silence` as in `bdprune.neurons.mask`)."""
        named = [n for n, chs in mask.pruned.items() if chs]
        if not named:
            return self.reference
        first = min(named, key=lambda n: self.order[n])
        block = self._entry(first)
        with masked(self.model, self.layers, mask, silence):
            return self._full() if block is None else self._replay(block)

    def on(self, model: nn.Module) -> Replay:
        """This replay for a copy of its model (`copy.deepcopy`: the same module names), sharing what is cached
        so far; what the copy caches or refreshes later stays its own."""
        other = copy.copy(self)
        other.model, other.modules = model, dict(model.named_modules())
        other.inputs, other.entry = dict(self.inputs), dict(self.entry)
        return other

    def predictions(self, mask: ChannelMask, silence: str = "bn") -> torch.Tensor:
        return self.logits(mask, silence).argmax(1)

    # -- choosing and checking a block ------------------------------------------------------------------------------
    def _entry(self, layer: str) -> str | None:
        if layer not in self.entry:
            self.entry[layer] = next((b for b in self._candidates(layer) if self._usable(b)), None)
        return self.entry[layer]

    def _candidates(self, layer: str) -> list[str]:
        """Blocks holding `layer`'s BN (modules whose parent is an nn.Sequential), innermost first."""
        module = next(l.bn or l.conv for l in self.layers if l.name == layer)
        parts, out = module.split("."), []
        for end in range(len(parts), 0, -1):
            name, parent = ".".join(parts[:end]), ".".join(parts[: end - 1])
            if isinstance(self.modules.get(parent), nn.Sequential):
                out.append(name)
        return out

    def _usable(self, block: str) -> bool:
        if block not in self.inputs:
            self._cache([block])
        if block not in self.inputs:
            return False
        try:
            replayed = self._replay(block)
        except (RuntimeError, TypeError, ValueError):  # a stub's zeros did not fit where they went
            return False
        ok = torch.equal(replayed.argmax(1), self.reference.argmax(1))
        ok = ok and torch.allclose(replayed, self.reference, rtol=1e-4, atol=1e-4)
        if not ok:
            del self.inputs[block]
        return ok

    def prepare(self, layers: set[str] | list[str]) -> None:
        """Cache, in one pass, the inputs of every block that silencing a neuron of `layers` may replay from."""
        wanted = [b for name in dict.fromkeys(layers) for b in self._candidates(name) if b not in self.inputs]
        self._cache(list(dict.fromkeys(wanted)))

    def _cache(self, blocks: list[str]) -> torch.Tensor:
        """One full pass that records the input batches of `blocks` (innermost kept first, within `max_bytes`,
        replacing what was kept for them); returns the pass's logits."""
        if not self.shapes:
            self._record_order()
        kept: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}

        def grab(block: str):
            def hook(_m, args):
                if args and isinstance(args[0], torch.Tensor):
                    kept[block].append(args[0].detach().clone())

            return hook

        handles = [self.modules[b].register_forward_pre_hook(grab(b)) for b in blocks]
        try:
            logits = self._full()
        finally:
            for h in handles:
                h.remove()
        for block in blocks:
            self.inputs.pop(block, None)
        used = sum(t.numel() * t.element_size() for ts in self.inputs.values() for t in ts)
        for block, batches in kept.items():
            size = sum(t.numel() * t.element_size() for t in batches)
            if len(batches) == len(self._batches()) and used + size <= self.max_bytes:  # once per batch, and room
                self.inputs[block], used = batches, used + size
        return logits

    def _record_order(self) -> None:
        """When each module first starts and last finishes in one forward pass (on one sample), and its output."""
        counter = [0]

        def started(name):
            def hook(_m, _args):
                counter[0] += 1
                self.shapes.setdefault(name, (counter[0], counter[0]))

            return hook

        def finished(name):
            def hook(_m, _args, output):
                counter[0] += 1
                self.shapes[name] = (self.shapes[name][0], counter[0])
                if isinstance(output, torch.Tensor):
                    self.outputs.setdefault(name, output.detach())

            return hook

        handles = []
        for name, m in self.modules.items():
            if name:
                handles += [m.register_forward_pre_hook(started(name)), m.register_forward_hook(finished(name))]
        try:
            with evaluating(self.model):
                self.model(self.data.subset([0]).float_images().to(model_device(self.model)))
        finally:
            for h in handles:
                h.remove()

    # -- running ------------------------------------------------------------------------------------------------
    def _batches(self) -> list[slice]:
        return [slice(s, s + self.batch_size) for s in range(0, len(self.data), self.batch_size)]

    def _full(self) -> torch.Tensor:
        out = []
        with evaluating(self.model):
            for images, _, _ in iterate_batches(self.data, self.batch_size, device=model_device(self.model)):
                out.append(self.model(images).float().cpu())
        return torch.cat(out)

    def _replay(self, block: str, refresh: bool = False) -> torch.Tensor:
        """Logits replayed from `block`; with `refresh`, the inputs of the cached blocks after it are recorded
        again on the way (the model changed at `block`, so theirs changed too)."""
        start = self.shapes[block][0]
        later = [b for b in self.inputs if self.shapes[b][0] > start] if refresh else []
        fresh: dict[str, list[torch.Tensor]] = {b: [] for b in later}
        done = [n for n, (_, end) in self.shapes.items() if end < start and not block.startswith(n + ".")]
        stubs = [n for n in done if not any(n.startswith(d + ".") for d in done)]  # the outermost ones
        if any(n not in self.outputs for n in stubs):
            raise TypeError("a module before the block returns something other than one tensor")
        batch = iter(self.inputs[block])
        out = []
        with ExitStack() as stack, evaluating(self.model):
            for name in stubs:
                stack.enter_context(
                    _stubbed(self.modules[name], self.outputs[name], self.stub_outputs.setdefault(name, {}))
                )
            handle = self.modules[block].register_forward_pre_hook(lambda _m, args: (next(batch), *args[1:]))
            stack.callback(handle.remove)
            for b in later:
                grab = self.modules[b].register_forward_pre_hook(lambda _m, args, b=b: fresh[b].append(args[0].clone()))
                stack.callback(grab.remove)
            for images, _, _ in iterate_batches(self.data, self.batch_size, device=model_device(self.model)):
                out.append(self.model(images).float().cpu())
        self.inputs.update(fresh)
        return torch.cat(out)


def prefix_logits(
    model: nn.Module,
    data: ImageSet,
    layers: list[NeuronLayer],
    order: list[tuple[str, int]],
    *,
    silence: str = "bn",
    batch_size: int = 256,
    replay: Replay | None = None,
) -> Iterator[torch.Tensor]:
    """Logits on `data` with the first 1, 2, ... neurons of `order` silenced, one prefix at a time (stop reading
    when done). Each step silences one more neuron in a copy of `model` and re-runs only from that neuron's block,
    recording the later blocks' inputs on the way, so a step costs what one suspect costs `Replay.logits`.
    `model` itself is not modified. `replay`: one already made for `model` on `data` (its caches are reused)."""  # fmt: skip
    work = copy.deepcopy(model)
    replay = replay.on(work) if replay is not None else Replay(work, data, layers, batch_size=batch_size)
    replay.prepare([name for name, _ in order])
    for name, channel in order:
        block = replay._entry(name)  # chosen (and checked) on the model before this step
        silence_(work, layers, ChannelMask({name: [channel]}), silence)
        if block is None or block not in replay.inputs:  # a full pass, recording every cached block's input again
            logits = replay._cache([*replay.inputs, *([block] if block is not None else [])])
        else:
            logits = replay._replay(block, refresh=True)
        replay.reference = logits  # later blocks are checked against the model as it now is
        yield logits


@contextmanager
def _stubbed(module: nn.Module, example: torch.Tensor, made: dict[int, torch.Tensor]) -> Iterator[None]:
    """`module` returns a tensor shaped like `example` (batch size taken from its input) for the block's duration.

    Its values never matter: whatever is computed from it is discarded when the block's cached input replaces
    it (the check in `Replay._usable` makes sure of that), so one zero tensor per batch size (kept in `made`
    across replays) serves every call.
    """

    def forward(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        size = first.shape[0] if first is not None else example.shape[0]
        if size not in made:
            made[size] = example.new_zeros((size, *example.shape[1:]))
        return made[size]

    module.forward = forward
    try:
        yield
    finally:
        del module.forward
