"""The UNet fast path: CUDA graphs of the unchanged eager UNet, one per input signature.

On a GPU the eager UNet is bound by Python and kernel launches (performance.md: 25 it/s end to end for SD 1.5 on an
H200, 84-98 it/s as a CUDA graph). A :class:`GraphRunner` replaces ``DenoiserHooks.unet_forward`` for a sampling run:

- the first call with a new signature (input shapes, dtypes and devices, the other UNet arguments, and the UNet's
  fingerprint) runs eagerly; the second captures a graph into the model's memory pool and checks the replay against
  an eager call on the same inputs: a graph that is not bitwise identical is dropped and that signature stays eager;
- later calls copy their inputs into the graph's static buffers and replay it;
- the fingerprint covers what a script can change under a graph (hooks on any module, attention processors, a
  replaced ``forward``, where the weights live): a change means new signatures, so patched UNets are captured
  afresh. Weights changed in place (LoRA merges) need no new capture: a replay reads them where they are.

The compile tier (mode "compile", opt-in) adds ``torch.compile`` (Inductor, no CUDA graphs of its own, one shape per
compile) for the sizes the ``unet_compile_sizes`` setting lists: the first run at such a size compiles its signature
on a background thread while the run goes on with graphs of the eager UNet; once compiled, the signature is captured
again with the compiled UNet. Compiled output is not bitwise eager's (Inductor fuses and reorders float
reductions): its graph is kept when it is within ``COMPILED_TOLERANCE`` of eager, and the largest difference seen
is recorded (``GraphCache.compiled_max_diff``).

The capture itself is pluggable (``capture=``), so the bookkeeping is tested on CPU with a stand-in, and so is the
compiler's backend (``COMPILE_BACKEND``; the tests use "eager").
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

log = logging.getLogger("webui")

EAGER, DISABLED = "eager", "disabled"  # a signature seen once; one whose graph did not match eager
COMPILE_BACKEND = "inductor"
COMPILED_TOLERANCE = 2e-2  # absolute, on the UNet's output (noise predictions of unit scale)


def _leaves(value: Any, prefix: str = ""):
    """(path, tensor or plain value) for every leaf of nested dicts, lists and tuples, in a fixed order."""
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _leaves(value[key], f"{prefix}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _rebuild(template: Any, tensors: list) -> Any:
    """``template`` with its tensor leaves replaced, in ``_leaves`` order, by ``tensors``."""
    import torch

    iterator = iter(tensors)

    def walk(value):
        if isinstance(value, dict):
            return {key: walk(value[key]) for key in sorted(value)}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(item) for item in value)
        return next(iterator) if isinstance(value, torch.Tensor) else value

    return walk(template)


def fingerprint(unet: Any) -> tuple:
    """What a graph of ``unet`` depends on besides its inputs: every module's hooks and attention processor, an
    instance-level ``forward``, and the storage, dtype and device of its first and last parameters."""
    import torch.nn.modules.module as module_globals

    parts: list = [id(unet), "forward" in vars(unet),
                   len(module_globals._global_forward_hooks), len(module_globals._global_forward_pre_hooks)]
    for name, module in unet.named_modules():
        hooks = (len(module._forward_hooks), len(module._forward_pre_hooks), "forward" in vars(module))
        processor = getattr(module, "processor", None)
        if hooks != (0, 0, False) or processor is not None:
            parts.append((name, hooks, id(processor)))
    parameters = list(unet.parameters())
    for parameter in (parameters[0], parameters[-1]) if parameters else ():
        parts.append((parameter.data_ptr(), str(parameter.dtype), str(parameter.device)))
    return tuple(parts)


def signature(call: Any, unet_fingerprint: tuple) -> tuple:
    import torch

    leaves = []
    for path, value in _leaves({"x": call.x, "timestep": call.timestep, "kwargs": call.kwargs}):
        if isinstance(value, torch.Tensor):
            leaves.append((path, tuple(value.shape), str(value.dtype), str(value.device)))
        else:
            leaves.append((path, repr(value)))
    return unet_fingerprint, tuple(leaves)


def cuda_capture(fn: Callable[[list], Any], static_inputs: list, pool: Any) -> Callable[[], Any]:
    """Capture ``fn(static_inputs)`` as a CUDA graph in ``pool`` (after one warm-up call on a side stream, as CUDA
    graphs require); returns ``replay()``, which gives the graph's static output."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = fn(static_inputs)

    def replay():
        graph.replay()
        return output

    return replay


class GraphCache:
    """One model's graphs by signature, and the memory pool they share; kept in ``model.extra``. With the compile
    tier also its compiled UNet and the signatures compiled (or being compiled) for it."""

    def __init__(self) -> None:
        self.entries: dict[tuple, Any] = {}
        self.pool: Any = None
        self.captures = 0
        self.warned: set[str] = set()
        self.compiled_unet: Any = None
        self.compiling: dict[tuple, Future] = {}  # signature -> its background compile (result: True when it worked)
        self.compiled_max_diff = 0.0
        self._compiler: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def clear(self) -> None:
        self.entries.clear()

    def compiled_ready(self, key: tuple) -> bool:
        future = self.compiling.get(key)
        return future is not None and future.done() and future.exception() is None and future.result() is True

    def compile_in_background(self, key: tuple, run_compiled: Callable[[], Any]) -> None:
        """Compile ``key``'s signature once, off the sampling thread: ``run_compiled()`` calls the compiled UNet on
        a copy of the inputs (the first call is what compiles)."""
        with self._lock:
            if key in self.compiling:
                return
            if self._compiler is None:
                self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unet-compile")

            def work() -> bool:
                import torch

                try:
                    with torch.inference_mode():
                        run_compiled()
                    return True
                except Exception as e:  # the size stays on the graph tier; said once
                    message = f"UNet fast path: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); " \
                              "this size stays on CUDA graphs of the eager UNet"
                    if message not in self.warned:
                        self.warned.add(message)
                        log.warning(message)
                    return False

            self.compiling[key] = self._compiler.submit(work)


def graphs_unsupported() -> str | None:
    """Why CUDA graphs cannot be used in this process, or None."""
    if "cudaMallocAsync" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
        return "PYTORCH_CUDA_ALLOC_CONF selects cudaMallocAsync, which CUDA graph pools do not support"
    return None


class GraphRunner:
    """``unet_forward`` for one sampling run (see the module docstring). ``eager`` is the forward it replaces;
    ``capture(fn, static_inputs, pool)`` builds a replay function (CUDA graphs by default)."""

    def __init__(self, cache: GraphCache, eager: Callable[[Any, Any], Any],
                 capture: Callable[..., Callable[[], Any]] | None = None, pool_factory: Callable[[], Any] | None = None,
                 compile_sizes: tuple[tuple[int, int], ...] = ()):
        self.cache, self.eager, self.capture = cache, eager, capture or cuda_capture
        self.pool_factory = pool_factory
        self.compile_sizes = compile_sizes  # (latent height, latent width) the compile tier compiles
        self._fingerprints: dict[int, tuple] = {}  # per UNet (a refiner continues the run on another)

    def __call__(self, unet: Any, call: Any):
        import torch

        if not isinstance(call.timestep, torch.Tensor) or call.timestep.device != call.x.device:
            call.timestep = torch.as_tensor(call.timestep, device=call.x.device)  # an input, not a constant
        if id(unet) not in self._fingerprints:  # once per run and UNet: ~700 modules are read
            self._fingerprints[id(unet)] = fingerprint(unet)
        key = signature(call, self._fingerprints[id(unet)])
        if self.compile_sizes and tuple(call.x.shape[-2:]) in self.compile_sizes and key not in self.cache.compiling:
            self._start_compile(key, unet, call)
        entry = self.cache.entries.get(key)
        if entry is None:
            self.cache.entries[key] = EAGER
            return self.eager(unet, call)
        if entry == DISABLED:
            return self.eager(unet, call)
        tensors = [value for _, value in _leaves(self._inputs(call)) if isinstance(value, torch.Tensor)]
        compiled = self.cache.compiled_ready(key)
        if entry == EAGER or (compiled and not entry[2]):  # new, or compiled since its eager graph was captured
            return self._capture(key, unet, call, tensors, compiled)
        static_inputs, replay, _ = entry
        for static, value in zip(static_inputs, tensors):
            static.copy_(value)
        return replay().clone()  # the static output is overwritten by the next replay

    @staticmethod
    def _inputs(call: Any) -> dict:
        return {"x": call.x, "timestep": call.timestep, "kwargs": call.kwargs}

    def _start_compile(self, key: tuple, unet: Any, call: Any) -> None:
        import torch

        if self.cache.compiled_unet is None:
            self.cache.compiled_unet = torch.compile(unet, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
        compiled_unet = self.cache.compiled_unet
        inputs = _rebuild(self._inputs(call), [value.clone() for _, value in _leaves(self._inputs(call))
                                               if isinstance(value, torch.Tensor)])

        def run_compiled():
            return compiled_unet(inputs["x"], inputs["timestep"], **inputs["kwargs"], return_dict=False)[0]

        self.cache.compile_in_background(key, run_compiled)

    def _capture(self, key: tuple, unet: Any, call: Any, tensors: list, compiled: bool = False):
        template = self._inputs(call)
        static_inputs = [tensor.clone() for tensor in tensors]
        forward = self.cache.compiled_unet if compiled else unet

        def run(inputs: list):
            rebuilt = _rebuild(template, inputs)
            return self.eager(forward, type(call)(**{**vars(call), "x": rebuilt["x"], "timestep": rebuilt["timestep"],
                                                      "kwargs": rebuilt["kwargs"]}))

        if self.cache.pool is None and self.pool_factory is not None:
            self.cache.pool = self.pool_factory()
        try:
            replay = self.capture(run, static_inputs, self.cache.pool)
        except Exception as e:  # a UNet that cannot be captured runs eagerly, and says why once
            from modules import devices

            if devices.is_out_of_memory(e):  # not the graph's fault: the out-of-memory ladder decides
                del self.cache.entries[key]
                raise
            self.cache.entries[key] = DISABLED
            self._warn(f"UNet fast path: CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly")
            return self.eager(unet, call)
        self.cache.captures += 1
        for static, value in zip(static_inputs, tensors):
            static.copy_(value)
        graphed = replay().clone()
        eager = self.eager(unet, call)
        if compiled:
            difference = float((graphed.float() - eager.float()).abs().max()) if graphed.shape == eager.shape else \
                float("inf")
            self.cache.compiled_max_diff = max(self.cache.compiled_max_diff, difference)
            if difference <= COMPILED_TOLERANCE:
                self.cache.entries[key] = (static_inputs, replay, True)
                return eager
            self._warn(f"UNet fast path: the compiled UNet differs from eager by {difference:.3g}; this input size "
                       "keeps CUDA graphs of the eager UNet")
            self.cache.compiling[key] = _failed()  # not compiled again
            return self._capture(key, unet, call, tensors)
        if not (graphed.shape == eager.shape and bool((graphed == eager).all())):
            self.cache.entries[key] = DISABLED
            self._warn("UNet fast path: a CUDA graph did not reproduce the eager UNet bit for bit; this input size "
                       "runs eagerly")
            return eager
        self.cache.entries[key] = (static_inputs, replay, False)
        return eager

    def _warn(self, message: str) -> None:
        if message not in self.cache.warned:
            self.cache.warned.add(message)
            log.warning(message)


def _failed() -> Future:
    future: Future = Future()
    future.set_result(False)
    return future


def compile_sizes() -> tuple[tuple[int, int], ...]:
    """The ``unet_compile_sizes`` setting ("512x512, 1024x1024", pixels) as latent (height, width) pairs."""
    from modules import shared

    sizes = []
    for item in str(shared.opts.unet_compile_sizes or "").split(","):
        width, _, height = item.strip().lower().partition("x")
        if width.strip().isdigit() and height.strip().isdigit():
            sizes.append((int(height) // 8, int(width) // 8))
    return tuple(sizes)


def mode() -> str:
    """The fast-path mode: ``--fast-path`` when given, else the ``unet_fast_path`` setting."""
    from modules import shared

    return getattr(shared.cmd_opts, "fast_path", None) or shared.opts.unet_fast_path


def runner_for(model: Any, mode: str, eager: Callable[[Any, Any], Any]) -> GraphRunner | None:
    """The run's ``unet_forward`` for ``model`` in fast-path ``mode``; None to run eagerly (mode off, not on a CUDA
    device, or graphs unsupported here)."""
    if mode == "off" or getattr(model.device, "type", None) != "cuda":
        return None
    if model.extra.get("memory_mode", "normal") != "normal":  # --medvram/--lowvram move the weights: no graphs
        return None
    reason = graphs_unsupported()
    if reason is not None:
        cache = model.extra.setdefault("unet_graphs", GraphCache())
        if reason not in cache.warned:
            cache.warned.add(reason)
            log.warning("UNet fast path off: %s", reason)
        return None
    import torch

    if mode == "compile":  # Inductor's and Triton's caches survive a restart in the data dir (a temp dir otherwise)
        from modules import paths

        cache_root = os.path.join(paths.data_path, "cache")
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_root, "torchinductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache_root, "triton"))
    cache = model.extra.setdefault("unet_graphs", GraphCache())
    return GraphRunner(cache, eager, pool_factory=torch.cuda.graph_pool_handle,
                       compile_sizes=compile_sizes() if mode == "compile" else ())
