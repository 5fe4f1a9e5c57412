"""seqpar from Python: exact softmax attention over a sequence sharded across the ranks of an mpi4py
communicator, forward and backward, on NumPy arrays or PyTorch tensors.

    import seqpar
    from mpi4py import MPI
    plan = seqpar.Plan(MPI.COMM_WORLD, tokens=T, heads=8, kv_heads=2, head_dim=64,
                       causal=True, strategy="zigzag")
    plan.local_ranges                      # [(start, stop), ...] global rows this rank holds
    o, lse = plan.forward(q, k, v)         # this rank's rows: q [rows, heads, d], lse [heads, rows]
    dq, dk, dv = plan.backward(q, k, v, o, lse, do)
    o = seqpar.attention(q, k, v, plan)    # torch tensors, differentiable

Every call is collective over the plan's communicator: every rank calls it, in the same order.
Bad input on any rank raises `seqpar.Error` (a ValueError) on every rank with the library's own
message, which names the rank; nothing aborts the interpreter. The calls release the GIL.

The module is a thin ctypes layer over libSeqparC.so (seqpar.h); it finds the library in
$SEQPAR_LIBRARY, beside this file, or in the repository's .build/release (an editable install).
"""

import ctypes
import os
from pathlib import Path

import numpy as np

__all__ = ["Plan", "Error", "attention", "library_path", "bf16_path"]


class Error(ValueError):
    """A call seqpar refused or that failed; the message is the library's (it names the rank)."""


_F32, _BF16, _F16 = 0, 1, 2
_DTYPE_CODES = {"float32": _F32, "bfloat16": _BF16, "float16": _F16}


def library_path():
    """Where libSeqparC.so is loaded from."""
    here = Path(__file__).resolve().parent
    candidates = [os.environ.get("SEQPAR_LIBRARY"), here / "libSeqparC.so", here.parents[2] / ".build" / "release" / "libSeqparC.so"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise ImportError(
        "seqpar: libSeqparC.so not found (looked in $SEQPAR_LIBRARY, %s and %s); build it with "
        "`swift build -c release --product SeqparC` (Launch/test does), or point $SEQPAR_LIBRARY at it" % (candidates[1], candidates[2]))


_lib = None


def _library():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(library_path())
        p, i64, i32, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
        lib.seqpar_options_init.argtypes = [ctypes.POINTER(_Options)]
        lib.seqpar_options_init.restype = None
        lib.seqpar_plan_create.argtypes = [p, ctypes.POINTER(_Options), ctypes.POINTER(p), ctypes.c_char_p, ctypes.c_size_t]
        lib.seqpar_plan_create.restype = i32
        lib.seqpar_plan_destroy.argtypes = [p]
        lib.seqpar_plan_destroy.restype = None
        lib.seqpar_plan_rows.argtypes = [p]
        lib.seqpar_plan_rows.restype = i64
        lib.seqpar_plan_range_count.argtypes = [p]
        lib.seqpar_plan_range_count.restype = i64
        lib.seqpar_plan_range.argtypes = [p, i64, ctypes.POINTER(i64), ctypes.POINTER(i64)]
        lib.seqpar_plan_range.restype = i32
        lib.seqpar_bf16_path.argtypes = []
        lib.seqpar_bf16_path.restype = ctypes.c_char_p
        lib.seqpar_plan_error.argtypes = [p]
        lib.seqpar_plan_error.restype = ctypes.c_char_p
        lib.seqpar_plan_agree.argtypes = [p, ctypes.c_char_p]
        lib.seqpar_plan_agree.restype = i32
        lib.seqpar_forward.argtypes = [p, i64, p, i64, p, i64, p, i64, p, i64, f]
        lib.seqpar_forward.restype = i32
        lib.seqpar_backward.argtypes = [p, i64, p, i64, p, i64, p, i64, p, i64, f, p, i64, p, i64, p, i64, p, i64]
        lib.seqpar_backward.restype = i32
        _lib = lib
    return _lib


class _Options(ctypes.Structure):
    _fields_ = [
        ("strategy", ctypes.c_char_p),
        ("tokens", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("scale", ctypes.c_double),
        ("causal", ctypes.c_int),
        ("window", ctypes.c_int64),
        ("cu_seqlens", ctypes.POINTER(ctypes.c_int64)),
        ("documents", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("threads", ctypes.c_int),
        ("s2_block", ctypes.c_int64),
        ("s2_local", ctypes.c_int64),
        ("s2_stride", ctypes.c_int64),
    ]


def bf16_path():
    """How this process multiplies bf16: 'oneDNN ...' (bf16 products, float32 accumulation, on a CPU
    with bf16 units) or 'converted to float32 ...' with the reason."""
    return _library().seqpar_bf16_path().decode()


def _dtype_name(dtype):
    """'float32', 'bfloat16' or 'float16' for a name, a NumPy/ml_dtypes dtype or a torch dtype."""
    name = str(dtype).replace("torch.", "")
    name = {"float": "float32", "half": "float16", "bf16": "bfloat16", "f32": "float32", "f16": "float16"}.get(name, name)
    if name not in _DTYPE_CODES:
        raise Error("dtype %s is not one seqpar takes: float32, bfloat16 or float16" % (dtype,))
    return name


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _numpy_dtype(name):
    if name == "bfloat16":
        try:
            import ml_dtypes
            return np.dtype(ml_dtypes.bfloat16)
        except ImportError:
            return np.dtype(np.uint16)  # bf16 bits
    return np.dtype(name)


class Plan:
    """Attention over `tokens` tokens sharded across `comm`'s ranks by `strategy`.

    Masks: `causal`; `window` (a sliding window, causal); `s2=(block, local, stride)` (S2-Attention's
    per-head strided blocks, causal; strategy "s2" moves only the blocks it reads); `cu_seqlens`
    (packed documents: offsets 0 = c[0] < ... < c[n] = tokens; a query sees only its own
    document's keys, with the other mask inside it). `dtype`: the element type of every tensor ('float32', 'bfloat16',
    'float16' or the NumPy/torch dtype); LSE is float32. `scale` defaults to 1/sqrt(head_dim).
    """

    def __init__(self, comm, *, tokens, heads, head_dim, kv_heads=None, causal=False, window=None, cu_seqlens=None,
                 s2=None, scale=None, strategy="zigzag", dtype="float32", threads=1):
        from mpi4py import MPI
        if not isinstance(comm, MPI.Comm):
            raise Error("comm must be an mpi4py communicator (such as MPI.COMM_WORLD), not %s" % type(comm).__name__)
        self._plan = None
        lib = _library()
        self._lib = lib
        self.comm = comm
        # What Python checks itself is agreed over comm, as the library's checks are: a refusal on
        # one rank is raised on every rank.
        local = None
        try:
            self.tokens, self.heads, self.head_dim = int(tokens), int(heads), int(head_dim)
            self.kv_heads = int(kv_heads) if kv_heads is not None else self.heads
            self.dtype = _dtype_name(dtype)
            if not isinstance(strategy, str):
                raise Error("strategy must be a name such as 'zigzag', not %r" % (strategy,))
            s2_values = None if s2 is None else tuple(int(x) for x in s2)
            if s2_values is not None and len(s2_values) != 3:
                raise Error("s2 must be (block, local, stride), got %r" % (s2,))
        except (Error, TypeError, ValueError) as error:
            local = str(error)
        found = comm.allgather(local)
        if any(found):
            raise Error("\n".join("rank %d: %s" % (r, m) for r, m in enumerate(found) if m))
        self.strategy = strategy
        options = _Options()
        lib.seqpar_options_init(ctypes.byref(options))
        options.strategy = strategy.encode()
        options.tokens, options.heads, options.kv_heads, options.head_dim = self.tokens, self.heads, self.kv_heads, self.head_dim
        options.scale = 0.0 if scale is None else float(scale)
        options.causal = 1 if causal else 0
        options.window = 0 if window is None else int(window)
        offsets = None
        if cu_seqlens is not None:
            offsets = np.ascontiguousarray(np.asarray(cu_seqlens, dtype=np.int64).ravel())
            options.cu_seqlens = offsets.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
            options.documents = max(0, len(offsets) - 1)
        if s2_values is not None:
            options.s2_block, options.s2_local, options.s2_stride = s2_values
        options.dtype = _DTYPE_CODES[self.dtype]
        options.threads = int(threads)
        handle = ctypes.c_void_p(MPI._handleof(comm))
        plan = ctypes.c_void_p()
        message = ctypes.create_string_buffer(4096)
        code = lib.seqpar_plan_create(handle, ctypes.byref(options), ctypes.byref(plan), message, len(message))
        if code != 0:
            raise Error(message.value.decode(errors="replace"))
        self._plan = plan
        self.rows = int(lib.seqpar_plan_rows(plan))
        ranges = []
        start, stop = ctypes.c_int64(), ctypes.c_int64()
        for index in range(lib.seqpar_plan_range_count(plan)):
            self._check(lib.seqpar_plan_range(plan, index, ctypes.byref(start), ctypes.byref(stop)))
            ranges.append((start.value, stop.value))
        self.local_ranges = ranges

    def close(self):
        """Frees the plan (collective). Also done when the plan is garbage-collected."""
        plan, self._plan = getattr(self, "_plan", None), None
        if plan:
            from mpi4py import MPI
            if MPI.Is_initialized() and not MPI.Is_finalized():
                self._lib.seqpar_plan_destroy(plan)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def local_positions(self):
        """The global positions of this rank's rows, in row order (an int64 array)."""
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.local_ranges]) if self.local_ranges else np.zeros(0, np.int64)

    def _check(self, code):
        if code != 0:
            raise Error(self._lib.seqpar_plan_error(self._plan).decode(errors="replace"))

    # Buffers: (pointer, row stride in elements, the object that keeps it alive), checked here for
    # what only Python knows (shape, dtype, device, layout); rows and strides are checked by seqpar
    # on every rank, so one rank's bad tensor is every rank's error.

    def _agree(self, prepare):
        """Runs `prepare` (this rank's own checks), then agrees with every rank on whether any
        failed: its result, or the same Error on every rank."""
        if self._plan is None:
            raise Error("the plan is closed")
        try:
            result, local = prepare(), None
        except Error as error:
            result, local = None, str(error)
        self._check(self._lib.seqpar_plan_agree(self._plan, None if local is None else local.encode()))
        return result

    def _buffer(self, name, x, heads, writable=False):
        shape = (self.rows, heads, self.head_dim)
        if _is_torch(x):
            import torch
            if x.device.type != "cpu":
                raise Error("%s is on %s; seqpar computes on the CPU: pass %s.cpu()" % (name, x.device, name))
            dtype = _dtype_name(x.dtype) if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else str(x.dtype)
            strides, pointer = tuple(x.stride()), x.data_ptr()
            if x.dim() != 3:
                raise Error("%s has %d dimensions; expected 3, [rows, heads, head_dim]" % (name, x.dim()))
        else:
            if not isinstance(x, np.ndarray):
                raise Error("%s is a %s; seqpar takes NumPy arrays or torch tensors" % (name, type(x).__name__))
            dtype = "bfloat16" if x.dtype.name == "bfloat16" or (self.dtype == "bfloat16" and x.dtype == np.uint16) else x.dtype.name
            if x.itemsize == 0 or any(s % x.itemsize for s in x.strides):
                raise Error("%s's strides %s are not whole elements" % (name, x.strides))
            strides, pointer = tuple(s // max(1, x.itemsize) for s in x.strides), x.ctypes.data
            if writable and not x.flags.writeable:
                raise Error("%s is read-only" % name)
        if dtype != self.dtype:
            raise Error("%s is %s; this plan takes %s (Plan(dtype=...) sets it)" % (name, dtype, self.dtype))
        if tuple(x.shape) != shape:
            raise Error("%s has shape %s; this rank (%d of %d) holds %d rows of global positions %s, so expected %s [rows, %s, head_dim]" % (
                name, tuple(x.shape), self.comm.Get_rank(), self.comm.Get_size(), self.rows,
                ", ".join("%d..<%d" % r for r in self.local_ranges) or "none", shape, "heads" if heads == self.heads else "kv_heads"))
        if self.rows and (strides[2] != 1 or (heads > 1 and strides[1] != self.head_dim)):
            raise Error("%s is not contiguous within a row (strides %s elements): each row's [%d, %d] must be "
                        "contiguous (rows may be strided); pass a contiguous copy" % (name, strides, heads, self.head_dim))
        if self.rows > 1 and strides[0] < heads * self.head_dim:
            raise Error("%s's rows overlap (row stride %d elements, a row is %d)" % (name, strides[0], heads * self.head_dim))
        return ctypes.c_void_p(pointer), (strides[0] if self.rows else heads * self.head_dim)

    def _empty_lse(self, like):
        if _is_torch(like):
            import torch
            return torch.from_numpy(np.empty((self.heads, self.rows), np.float32))
        return np.empty((self.heads, self.rows), np.float32)

    def _lse(self, name, lse):
        shape = (self.heads, self.rows)
        if _is_torch(lse):
            import torch
            if lse.dtype != torch.float32 or tuple(lse.shape) != shape:
                raise Error("%s must be float32 of shape %s [heads, rows], got %s %s" % (name, shape, lse.dtype, tuple(lse.shape)))
            lse = lse.detach().contiguous()
            return lse, ctypes.cast(ctypes.c_void_p(lse.data_ptr()), ctypes.POINTER(ctypes.c_float))
        lse = np.ascontiguousarray(lse)
        if lse.dtype != np.float32 or lse.shape != shape:
            raise Error("%s must be float32 of shape %s [heads, rows], got %s %s" % (name, shape, lse.dtype, lse.shape))
        return lse, lse.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def _empty(self, heads, like):
        shape = (self.rows, heads, self.head_dim)
        if _is_torch(like):
            # NumPy's allocation (glibc keeps large freed blocks for reuse, where torch's returns
            # them, so every call faulted its output's pages in again: 2% of a 4096-token forward).
            import torch
            bits = np.empty(shape, dtype=np.float32 if self.dtype == "float32" else np.uint16)
            return torch.from_numpy(bits).view(getattr(torch, self.dtype))
        return np.empty(shape, dtype=_numpy_dtype(self.dtype))

    def forward(self, q, k, v):
        """O ([rows, heads, head_dim], the plan's dtype) and LSE ([heads, rows], float32) of this
        rank's rows; NumPy arrays in, NumPy out, or torch tensors in, torch out."""
        def prepare():
            o = self._empty(self.heads, q)
            lse = self._empty_lse(q)
            return (o, lse, self._buffer("q", q, self.heads), self._buffer("k", k, self.kv_heads),
                    self._buffer("v", v, self.kv_heads), self._buffer("o", o, self.heads, writable=True), self._lse("lse", lse))
        o, lse, (qp, qs), (kp, ks), (vp, vs), (op, os_), (_, lp) = self._agree(prepare)
        self._check(self._lib.seqpar_forward(self._plan, self.rows, qp, qs, kp, ks, vp, vs, op, os_, lp))
        return o, lse

    def backward(self, q, k, v, o, lse, do):
        """dQ, dK, dV of this rank's rows (dK/dV of its own K/V rows, every rank's queries counted),
        for the output gradient `do` of the forward that gave `o` and `lse`."""
        def prepare():
            dq, dk, dv = self._empty(self.heads, q), self._empty(self.kv_heads, q), self._empty(self.kv_heads, q)
            return (dq, dk, dv, self._buffer("q", q, self.heads), self._buffer("k", k, self.kv_heads),
                    self._buffer("v", v, self.kv_heads), self._buffer("o", o, self.heads), self._lse("lse", lse),
                    self._buffer("do", do, self.heads), self._buffer("dq", dq, self.heads, writable=True),
                    self._buffer("dk", dk, self.kv_heads, writable=True), self._buffer("dv", dv, self.kv_heads, writable=True))
        (dq, dk, dv, (qp, qs), (kp, ks), (vp, vs), (op, os_), (keep, lp), (dop, dos), (dqp, dqs), (dkp, dks),
         (dvp, dvs)) = self._agree(prepare)
        self._check(self._lib.seqpar_backward(self._plan, self.rows, qp, qs, kp, ks, vp, vs, op, os_, lp, dop, dos,
                                              dqp, dqs, dkp, dks, dvp, dvs))
        del keep
        return dq, dk, dv


def attention(q, k, v, plan):
    """Differentiable distributed attention on torch tensors of this rank's rows: the output O;
    `loss.backward()` runs seqpar's distributed backward (collective, as the forward)."""
    return _function()(q, k, v, plan)


_attention_function = None


def _function():
    global _attention_function
    if _attention_function is None:
        import torch

        class SeqparAttention(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v, plan):
                o, lse = plan.forward(q, k, v)
                ctx.save_for_backward(q, k, v, o, lse)
                ctx.plan = plan
                return o

            @staticmethod
            def backward(ctx, do):
                q, k, v, o, lse = ctx.saved_tensors
                dq, dk, dv = ctx.plan.backward(q, k, v, o, lse, do.contiguous())
                return dq, dk, dv, None

        _attention_function = SeqparAttention.apply
    return _attention_function
