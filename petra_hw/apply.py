"""Run a pipeline's steps on a copy of the baseline, reusing cached intermediate models.

``apply`` runs the canonical form of the pipeline (``petra_hw.canonical``) step by step on a deep
copy of the baseline model; the baseline is never touched.  Each step's role (run, deferred to the
backend, or fake-quantized training kept for QDQ export) comes from
``petra_hw.steps.qat.step_roles``.  Before step k the global RNGs are seeded from (seed, k), so a
prefix computes the same model whether its earlier steps ran now or came from the cache.

``PrefixCache`` keeps the model after each prefix, keyed by (suite, baseline state hash, prefix
hash, the prefix's step roles, channel multiple, seed, petra-hw version): the roles are part of the
key because the same prefix means a different model when its last quantization step is the
pipeline's last (deferred) or not.  The prefix hash covers only the model-level settings that the
prefix's steps read (``steps.settings_read``; each step runs with a context that refuses any
other), so ``LR - Pr`` is one entry whatever the learning rate of the training that follows it.
Entries are files written by ``petra_hw.serialize`` (JSON spec + state dict, loaded with
``weights_only=True``), each written to a temporary file and moved into place with
``os.replace``, so a killed writer never leaves a half entry; an entry that fails to load is
logged, removed and recomputed.  Eviction is least-recently-used (file mtime, touched on every
hit) by total bytes.  Each entry records the compute seconds of its whole prefix, so a
hit knows what it saved, and the effects its steps reported (``steps.effects``: no-ops and
skipped layers), so a restored prefix reports them as a computed one does.  Fake-quantized models
(QAT as last step) are not cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from petra_hw import __version__
from petra_hw.baseline import Baseline, seed_everything
from petra_hw.canonical import canonicalize
from petra_hw.kinds import SETTINGS
from petra_hw.pipeline import Pipeline
from petra_hw.serialize import SerializeError, load_model, save_model
from petra_hw.steps.base import StepContext, get_step, settings_read
from petra_hw.steps.effects import NoOpStep, StepEffect
from petra_hw.steps.qat import DEFERRED, FAKE_QUANT, fake_quant_train, step_roles
from petra_hw.suite import Suite

log = logging.getLogger(__name__)

STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died


@dataclass
class AppliedModel:
    """The transformed model and how it was obtained."""

    model: nn.Module
    pipeline: Pipeline  # the canonical form that ran
    requested: Pipeline  # the pipeline as given
    roles: tuple[str, ...]
    step_seconds: tuple[
        float, ...
    ]  # compute time spent in this call, per step (0: cached/deferred)
    cache_hit: int  # length of the prefix restored from the cache (0: none)
    seconds_saved: float  # compute time that prefix had cost
    effects: tuple[StepEffect, ...] = ()  # no-ops and skipped layers the steps reported

    @property
    def notes(self) -> list[str]:
        """One line per reported effect, e.g. ``'LR: skipped: 31 layers (...)'``."""
        return [e.note for e in self.effects]

    @property
    def wall_s(self) -> float:
        return sum(self.step_seconds)


class PrefixCache:
    """Intermediate models on disk, LRU-evicted to ``max_bytes``; safe across processes."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0
        self.seconds_saved = 0.0

    @staticmethod
    def key(
        suite: str,
        state_hash: str,
        prefix: Pipeline,
        roles: tuple[str, ...],
        channel_multiple: int,
        seed: int,
        fidelity: float = 1.0,
    ) -> str:
        fields = [suite, state_hash, prefix.hash, list(roles), channel_multiple, seed, __version__]
        if fidelity < 1.0:  # a reduced-fidelity model is another model (full keys unchanged)
            fields.append(fidelity)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def lookup(
        self, keys: list[str | None], build_model: Callable[[], nn.Module]
    ) -> tuple[int, nn.Module, float, tuple[StepEffect, ...]] | None:
        """The longest cached prefix among ``keys`` (index k-1 holds prefix k's key, None: not
        cacheable) as (k, model, compute seconds, the prefix's step effects), counting one hit
        or one miss."""
        for k in range(len(keys), 0, -1):
            key = keys[k - 1]
            if key is None or not self.path(key).exists():
                continue
            loaded = self._load(key, build_model)
            if loaded is not None:
                model, seconds, effects = loaded
                self.hits += 1
                self.seconds_saved += seconds
                return k, model, seconds, effects
        self.misses += 1
        return None

    def _load(
        self, key: str, build_model: Callable[[], nn.Module]
    ) -> tuple[nn.Module, float, tuple[StepEffect, ...]] | None:
        path = self.path(key)
        try:
            model, meta = load_model(path, build_model)
            if meta.get("key") != key:
                raise SerializeError("entry does not belong to its key")
        except FileNotFoundError:
            return None  # evicted by another process meanwhile
        except Exception as exc:  # any unreadable entry is a cache miss, never a failure
            log.warning("removing unreadable cache entry %s: %s", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # most recently used
        except FileNotFoundError:
            pass
        effects = tuple(StepEffect.from_json(e) for e in meta.get("effects", ()))
        return model, float(meta.get("compute_s", 0.0)), effects

    def put(
        self,
        key: str,
        model: nn.Module,
        compute_s: float,
        label: str,
        effects: tuple[StepEffect, ...] = (),
    ) -> None:
        """Store ``model`` as the entry for ``key`` with the effects its prefix's steps reported;
        a model that cannot be serialized is skipped."""
        meta = {
            "key": key,
            "compute_s": compute_s,
            "label": label,
            "effects": [e.to_json() for e in effects],
        }
        try:
            save_model(model, self.path(key), meta)
        except (SerializeError, OSError) as exc:
            log.warning("not caching %s: %s", label, exc)
            return
        self.evict()

    def evict(self) -> None:
        """Remove least recently used entries until the total is within ``max_bytes``."""
        now = time.time()
        entries = []
        for p in self.root.iterdir():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if p.name.endswith(".tmp"):
                if now - st.st_mtime > STALE_TMP_S:
                    p.unlink(missing_ok=True)
                continue
            if p.suffix == ".pt":
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    def stats(self) -> dict[str, float]:
        sizes = [p.stat().st_size for p in self.root.glob("*.pt")]
        return {
            "hits": self.hits,
            "misses": self.misses,
            "seconds_saved": self.seconds_saved,
            "entries": len(sizes),
            "size_bytes": sum(sizes),
        }


def keyed_prefix(canon: Pipeline, k: int) -> Pipeline:
    """The first ``k`` steps with every setting they do not read at its default: what the model
    after them depends on."""
    read = set().union(*(settings_read(s) for s in canon.steps[:k]))
    unread = {p.name: p.default for p in SETTINGS.params if p.name not in read}
    return canon.prefix(k).replace_settings(**unread)


def prefix_keys(
    canon: Pipeline,
    suite: str,
    state_hash: str,
    channel_multiple: int,
    seed: int,
    fidelity: float = 1.0,
) -> list[str | None]:
    """The cache key of each prefix of the canonical pipeline ``canon`` (index k-1: the first k
    steps); None where the model after that prefix is not cached (deferred or fake-quantized).
    A reduced ``fidelity`` keys only the prefixes that train: the others are the same model."""
    roles = step_roles(canon)
    keys: list[str | None] = []
    trained = False
    for k in range(1, len(canon) + 1):
        trained = trained or canon.steps[k - 1].spec.trains
        keys.append(
            None
            if roles[k - 1] in (DEFERRED, FAKE_QUANT)
            else PrefixCache.key(
                suite,
                state_hash,
                keyed_prefix(canon, k),
                roles[:k],
                channel_multiple,
                seed,
                fidelity if trained else 1.0,
            )
        )
    return keys


def shared_prefix(parent: Pipeline, child: Pipeline) -> int:
    """How many leading steps of ``child`` (canonical) the cache can restore once ``parent`` was
    applied: the longest prefix whose key the parent's run also wrote."""
    written = set(prefix_keys(canonicalize(parent), "", "", 1, 0)) - {None}
    keys = prefix_keys(canonicalize(child), "", "", 1, 0)
    return max((k for k, key in enumerate(keys, 1) if key in written), default=0)


def apply(
    pipeline: Pipeline,
    baseline: Baseline,
    suite: Suite | None = None,
    *,
    channel_multiple: int = 1,
    seed: int = 0,
    cache: PrefixCache | None = None,
    epoch_callback: Callable[[int, float], None] | None = None,
    stop_on_noop: bool = False,
    fidelity: float = 1.0,
) -> AppliedModel:
    """Run ``pipeline`` on a copy of ``baseline.model``; step errors propagate to the caller.

    ``stop_on_noop`` (the search): raise ``NoOpStep`` at the first step that changed nothing,
    before anything after it runs or the no-op prefix is cached.  ``fidelity`` < 1 trains each
    training step on that share of every epoch."""
    suite = suite or baseline.suite
    canon = canonicalize(pipeline)
    roles = step_roles(canon)
    n = len(canon)
    effects: list[StepEffect] = []
    ctx = StepContext(
        suite,
        baseline.splits,
        canon,
        channel_multiple,
        seed,
        epoch_callback,
        report=effects.append,
        fidelity=fidelity,
    )
    keys: list[str | None] = []
    if cache is not None:
        keys = prefix_keys(canon, suite.name, baseline.state_hash, channel_multiple, seed, fidelity)
    start, saved, model = 0, 0.0, None
    if cache is not None and n:
        hit = cache.lookup(keys, suite.build_model)
        if hit is not None:
            start, model, saved, cached_effects = hit
            effects.extend(cached_effects)
            _check_noop(effects, stop_on_noop)
            log.info("apply %s: prefix of %d steps from cache (%.1f s saved)", canon, start, saved)
    if model is None:
        model = copy.deepcopy(baseline.model)
    seconds = [0.0] * n
    compute = saved
    for k in range(start, n):
        step, role = canon.steps[k], roles[k]
        if role == DEFERRED:
            log.info("apply %s: %s deferred to the backend compiler", canon, step)
            continue
        seed_everything(seed * 1000 + k)
        t = time.perf_counter()
        fn = fake_quant_train if role == FAKE_QUANT else get_step(step.kind)
        model = fn(model, step, replace(ctx, reads=settings_read(step)))
        seconds[k] = time.perf_counter() - t
        compute += seconds[k]
        _check_noop(effects, stop_on_noop)
        if cache is not None and keys[k] is not None:
            cache.put(keys[k], model, compute, str(canon.prefix(k + 1)), tuple(effects))
    return AppliedModel(
        model.eval(), canon, pipeline, roles, tuple(seconds), start, saved, tuple(effects)
    )


def _check_noop(effects: list[StepEffect], stop: bool) -> None:
    noop = next((e for e in effects if not e.changed), None)
    if stop and noop is not None:
        raise NoOpStep(noop)
