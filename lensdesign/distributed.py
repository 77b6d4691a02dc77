"""Training one design on several processes under torchrun: the one place that knows about ranks.

`torchrun --nproc_per_node K -m lensdesign optimize SPEC --out RUN` starts K processes with RANK, WORLD_SIZE and
LOCAL_RANK in their environment; `init()` joins them in a `torch.distributed` process group (gloo for CPU
tensors, NCCL for CUDA tensors, one GPU per local rank). Without torchrun (or with WORLD_SIZE 1) `current()` is
None and the trainer uses `Local`, which calls exactly what a single-process run always called.

What is split, per step (every random draw comes from `step_generator(seed, step)`, so every rank draws the
whole step and keeps its part; a K-process run trains on exactly the samples of a 1-process run):

* PSFs: the step's depths (the task's reference depths, then the training depths not among them) are cut into
  K contiguous, balanced blocks; each rank computes all wavelengths of its depths (`OpticalSystem`'s PSF stack,
  one PSF at a time). `gather_psfs` all-gathers the blocks into the full (D, W, P, P) stack on every rank
  (forward) and sums the stack's gradient over the ranks (backward), so each rank back-propagates the whole
  loss through its own PSFs only.
* Images: the batch items are cut into K contiguous blocks; a rank forms, reconstructs and scores its items
  with the full PSF stack. Its loss is its items' share of the batch mean (mean over its items × items / batch),
  so the partial losses, and their gradients, sum to the 1-process loss and gradient.
* Gradients of the element and of the reconstruction are summed over the ranks (`reduce_grads`) before the
  optimizer step; the sums are identical on every rank, so every rank holds the same parameters after each step.

Failures: every collective runs under a timeout (`LENSDESIGN_COLLECTIVE_TIMEOUT_S`, default 600 s). A rank that
raises records a one-line reason in torchrun's key-value store and leaves quietly; a rank whose collective fails
asks the store which rank failed (its reason, or a heartbeat that stopped) and rank 0 prints one line naming it.
Each worker dies with the launcher (SIGTERM on the launcher's death: it checkpoints like a stopped run).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from lensdesign.errors import LensdesignError

TIMEOUT_ENV = "LENSDESIGN_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
HEARTBEAT_S = 0.2  # how often each rank bumps its heartbeat counter in the store
DIAGNOSE_S = 2.0  # how long a rank whose collective failed watches the store before naming the failed rank
_PREFIX = "lensdesign/{}/"  # keys in torchrun's store, per restart of the job (TORCHELASTIC_RESTART_COUNT)

_current: Dist | None = None


def launched() -> bool:
    """True when this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def current() -> Dist | None:
    """The process group joined by `init()`, or None (single process)."""
    return _current


def is_rank0() -> bool:
    """True on rank 0 and in a single-process run: the process that writes the run directory."""
    return _current is None or _current.rank == 0


def split(count: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of block `index` when `count` items are cut into `parts` contiguous blocks whose sizes differ
    by at most one (the first `count % parts` blocks are one larger)."""
    q, r = divmod(count, parts)
    lo = index * q + min(index, r)
    return lo, lo + q + (1 if index < r else 0)


class PeerFailure(RuntimeError):
    """A collective failed: another rank died, raised, or the collective timed out."""


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        t = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise LensdesignError(f"{TIMEOUT_ENV}: {raw!r} is not a number of seconds; unset it or give e.g. 600") from None
    if not t > 0:
        raise LensdesignError(f"{TIMEOUT_ENV}: {raw!r} must be a positive number of seconds")
    return t


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when the launcher (its parent) dies, e.g. on SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Dist:
    """This process's place in the process group: rank, world size, local rank and the device it trains on."""

    rank: int
    world: int
    local_rank: int
    timeout_s: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    step: int | None = None  # the step in progress, for failure messages
    peer_failed: bool = False
    _store: Any = None
    _beat_store: Any = None
    _stop_beat: threading.Event = field(default_factory=threading.Event)
    _beat_thread: threading.Thread | None = None

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def _prefix(self) -> str:
        return _PREFIX.format(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    # ---- collectives (every call must be made by every rank, in the same order) ------------------------------
    @contextlib.contextmanager
    def _collective(self) -> Iterator[None]:
        try:
            yield
        except PeerFailure:
            raise
        except Exception as e:
            self.peer_failed = True
            raise PeerFailure(f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def _tensor(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def all_reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        """Sum (or `op`) of `t` over the ranks, in place; returns `t`."""
        with self._collective():
            tdist.all_reduce(t, op=op if op is not None else tdist.ReduceOp.SUM)
        return t

    def any(self, flags: list[bool]) -> list[bool]:
        """Element-wise: is the flag set on any rank?"""
        t = self.all_reduce(self._tensor([float(f) for f in flags]), tdist.ReduceOp.MAX)
        return [bool(v > 0) for v in t.tolist()]

    def barrier(self) -> None:
        """Wait until every rank has reached this point."""
        self.all_reduce(self._tensor([0.0]))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable object; tensors come back on the CPU)."""
        box = [obj if self.is_rank0 else None]
        with self._collective():
            tdist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def settle_device(self, device: torch.device) -> torch.device:
        """This rank's device for the chosen kind: `cuda:LOCAL_RANK` (one GPU per local rank) or the CPU."""
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise LensdesignError(f"LOCAL_RANK {self.local_rank}: only {torch.cuda.device_count()} CUDA devices on "
                                      "this node; start at most one process per GPU (--nproc_per_node)")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        return device

    # ---- the split of a step ---------------------------------------------------------------------------------
    def items(self, batch: int) -> tuple[int, int]:
        """[lo, hi) of the batch items this rank images and reconstructs."""
        return split(batch, self.world, self.rank)

    def psfs(self, pipe: Any, height: torch.Tensor, extra: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference PSFs (R, C, P, P), PSFs at `extra` depths (E, C, P, P)) like `Pipeline.psfs`, each rank
        computing the PSFs of its block of the R + E depths; the stacks are gathered on every rank."""
        optics = pipe.optics
        r = optics.src.shape[0]
        total = r + len(extra)
        lo, hi = split(total, self.world, self.rank)
        parts = []
        if lo < min(hi, r):
            parts.append(optics.src[lo:min(hi, r)])
        if hi > r:
            parts.append(optics.source_waves(extra[max(lo, r) - r:hi - r]))
        h = height.to(pipe.device, torch.float32)
        w, p = len(optics.wavelengths), optics.grid.psf_size
        if parts:
            local = pipe.stack(h, torch.cat(parts) if len(parts) > 1 else parts[0])
        else:  # more ranks than depths: nothing to compute, but stay in the graph so the backward collective runs
            local = h.new_zeros(0, w, p, p) + (h.sum() * 0 if h.requires_grad else 0)
        full = pipe.to_channels(gather_psfs(local, self, [split(total, self.world, i) for i in range(self.world)]))
        return full[:r], full[r:]

    def sensor(self, pipe: Any, scenes: torch.Tensor, psf: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator,
               lo: int, batch: int) -> torch.Tensor:
        """Sensor images of this rank's scene crops (items lo … lo + n − 1 of `batch`), with the noise a
        1-process run draws for those items (the noise of the whole batch is drawn, the other items' dropped)."""
        n = scenes.shape[0]
        if n == 0:
            return scenes[..., :0, :0]
        clean = pipe.irradiance(scenes, psf)
        rest = clean.new_zeros(batch - n, *clean.shape[1:])
        full = torch.cat([rest[:lo], clean, rest[lo:]])
        return pipe.noisy(full, sigma, gen)[lo:lo + n]

    def batch_loss(self, loss: torch.Tensor, n: int, batch: int, anchor: torch.Tensor) -> torch.Tensor:
        """This rank's share of the batch-mean loss: the mean over its `n` items × n / batch (0 and still tied to
        the PSF stack `anchor` when it has no items, so every rank runs the same backward collectives)."""
        if n == 0:
            return anchor.sum() * 0.0
        return loss * (n / batch)

    def step_metrics(self, loss: torch.Tensor, psnr_items: torch.Tensor, batch: int) -> tuple[float, float]:
        """(batch loss, mean PSNR over the batch items in dB), summed over the ranks."""
        t = self._tensor([float(loss), float(psnr_items.double().sum()) if psnr_items.numel() else 0.0])
        loss_sum, psnr_sum = self.all_reduce(t).tolist()
        return loss_sum, psnr_sum / batch

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients over the ranks. A parameter with a gradient on some rank gets zeros where it has
        none; one without a gradient on every rank keeps None (the optimizer skips it, as in a 1-process run)."""
        has = self.any([p.grad is not None for p in params])
        live = [p for p, h in zip(params, has, strict=True) if h]
        if not live:
            return
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in live])
        self.all_reduce(flat)
        i = 0
        for p in live:
            k = p.numel()
            p.grad.copy_(flat[i:i + k].view_as(p))
            i += k

    # ---- failures --------------------------------------------------------------------------------------------
    def _start_heartbeat(self, host: str, port: int) -> None:
        try:
            self._store = tdist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30),
                                         wait_for_workers=False)
            self._beat_store = tdist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=30),
                                              wait_for_workers=False)
        except Exception:  # no store to talk to: failures are still fatal, only unnamed
            self._store = self._beat_store = None
            return
        key = f"{self._prefix}beat/{self.rank}"

        def beat() -> None:
            while not self._stop_beat.wait(HEARTBEAT_S):
                try:
                    self._beat_store.add(key, 1)
                except Exception:
                    return

        self._beat_store.add(key, 1)
        self._beat_thread = threading.Thread(target=beat, name="lensdesign-heartbeat", daemon=True)
        self._beat_thread.start()
        atexit.register(self.close)

    def publish_failure(self, message: str) -> None:
        """Record why this rank is about to fail, for the rank that reports it."""
        with contextlib.suppress(Exception):
            if self._store is not None:
                self._store.set(f"{self._prefix}failed/{self.rank}", message)

    def _beats(self) -> dict[int, int]:
        out = {}
        for r in range(self.world):
            with contextlib.suppress(Exception):
                out[r] = int(self._store.add(f"{self._prefix}beat/{r}", 0))
        return out

    def diagnose(self) -> tuple[int, str] | None:
        """(failed rank, one line) after a collective failed: a rank that recorded a reason, else one whose
        heartbeat stopped within DIAGNOSE_S; None when every other rank looks alive (e.g. a timeout)."""
        if self._store is None:
            return None
        before = self._beats()
        deadline = time.monotonic() + DIAGNOSE_S
        while True:
            for r in range(self.world):
                key = f"{self._prefix}failed/{r}"
                with contextlib.suppress(Exception):
                    if r != self.rank and self._store.check([key]):
                        why = self._store.get(key).decode(errors="replace")
                        return r, f"rank {r} of {self.world} failed{self._at()}: {why}"
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        after = self._beats()
        dead = [r for r in range(self.world) if r != self.rank and after.get(r) == before.get(r)]
        if dead:
            return dead[0], (f"rank {dead[0]} of {self.world} stopped responding{self._at()} (killed, out of memory "
                             "or its node lost)")
        return None

    def _at(self) -> str:
        return f" at step {self.step}" if self.step is not None else ""

    def close(self) -> None:
        """Leave the process group (after the last collective)."""
        global _current
        self._stop_beat.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5 * HEARTBEAT_S)
            self._beat_thread = None
        if tdist.is_initialized():
            with contextlib.suppress(Exception):
                tdist.destroy_process_group()
        _current = None


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM: a KeyboardInterrupt, unless a failed collective is being reported (then the report comes first)."""
    if _current is not None and _current.peer_failed:
        return
    raise KeyboardInterrupt


def init() -> Dist:
    """Join torchrun's process group (once per process; gloo for CPU tensors, NCCL for CUDA tensors when CUDA is
    present). Raises LensdesignError for an environment torchrun did not set up."""
    global _current
    if _current is not None:
        return _current
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError) as e:
        raise LensdesignError(f"WORLD_SIZE is set but the torchrun environment is incomplete ({e}); launch with "
                              "'torchrun --nproc_per_node K -m lensdesign optimize ...'") from None
    timeout = _timeout_s()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _die_with_parent()
    # SIGTERM (torchrun stopping the ranks) ends a rank like Ctrl-C, never silently by the default action; the
    # training loop turns it into a checkpoint and a stop agreed by every rank
    signal.signal(signal.SIGTERM, _interrupt)
    tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    d = Dist(rank=rank, world=world, local_rank=local, timeout_s=timeout)
    d._start_heartbeat(host, port)
    _current = d
    return d


class _GatherPSFs(torch.autograd.Function):
    """Forward: the ranks' PSF blocks (d_r, W, P, P) → the full stack (D, W, P, P) on every rank. Backward: the
    stack's gradient summed over the ranks, this rank's block of it."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, d: Dist, blocks: list[tuple[int, int]]) -> torch.Tensor:  # type: ignore[override]
        size = max(hi - lo for lo, hi in blocks)
        buf = local.new_zeros(size, *local.shape[1:])
        buf[:local.shape[0]] = local
        parts = [torch.empty_like(buf) for _ in blocks]
        with d._collective():
            tdist.all_gather(parts, buf)
        ctx.d, ctx.block = d, blocks[d.rank]
        return torch.cat([part[:hi - lo] for part, (lo, hi) in zip(parts, blocks, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        g = ctx.d.all_reduce(grad.contiguous().clone())
        lo, hi = ctx.block
        return g[lo:hi], None, None


def gather_psfs(local: torch.Tensor, d: Dist, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """The full PSF stack from every rank's block ([lo, hi) of the depths per rank, in rank order)."""
    return _GatherPSFs.apply(local, d, blocks)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0]}" if text and not isinstance(e, LensdesignError) else (
        text.splitlines()[0] if text else e.__class__.__name__)


@contextlib.contextmanager
def failure_guard() -> Iterator[None]:
    """Around a command: under torchrun, turn a failure into one line on rank 0 that names the rank that failed.

    A rank that raises records its reason and exits quietly with code 2 (rank 0 prints its own error); a rank
    whose collective failed names the failed rank (rank 0 prints it; the others exit quietly with code 1). Ctrl-C /
    SIGTERM: only rank 0 speaks. Without a process group this does nothing.
    """
    try:
        yield
    except SystemExit:
        raise
    except BaseException as e:
        d = _current
        if d is None:
            raise
        for s in (signal.SIGTERM, signal.SIGINT):  # torchrun stops the other ranks now: finish this report first
            with contextlib.suppress(ValueError):
                signal.signal(s, signal.SIG_IGN)
        if isinstance(e, KeyboardInterrupt) and not d.peer_failed:
            d.close()
            if d.is_rank0:
                raise
            raise SystemExit(130) from None
        peer = d.peer_failed or isinstance(e, PeerFailure)
        if not peer:
            d.publish_failure(_first_line(e))
        found = d.diagnose() if peer else None
        d.close()
        if found is None:
            if d.is_rank0:
                if peer:
                    raise LensdesignError(f"a collective failed on rank 0{d._at()} ({e}); if a rank hung, raise "
                                          f"{TIMEOUT_ENV} (now {d.timeout_s:g} s) or check the other nodes") from None
                raise
            raise SystemExit(2) from None
        failed, line = found
        if d.is_rank0 or (failed == 0 and d.rank == 1):
            hint = "; the run continues from its last checkpoint with --resume" if d.step is not None else ""
            raise LensdesignError(line + hint) from None
        raise SystemExit(1) from None


class Local:
    """A whole step in one process: exactly the calls a single-process run makes (the `Dist` interface)."""

    rank, world, is_rank0 = 0, 1, True

    def items(self, batch: int) -> tuple[int, int]:
        return 0, batch

    def psfs(self, pipe: Any, height: torch.Tensor, extra: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        return pipe.psfs(height, extra)

    def sensor(self, pipe: Any, scenes: torch.Tensor, psf: torch.Tensor, sigma: torch.Tensor, gen: torch.Generator,
               lo: int, batch: int) -> torch.Tensor:
        return pipe.sensor(scenes, psf, sigma, gen)

    def batch_loss(self, loss: torch.Tensor, n: int, batch: int, anchor: torch.Tensor) -> torch.Tensor:
        return loss

    def step_metrics(self, loss: torch.Tensor, psnr_items: torch.Tensor, batch: int) -> tuple[float, float]:
        return float(loss), float(psnr_items.mean())

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        return None
