"""safetensors files with numpy alone, so that the tests that check our own numbers do not need the
`safetensors` package from PyPI (only tests/checkpoint_cli_test.sh, whose point is that outside
reader, imports it).

The format: an 8-byte little-endian u64 N, then N bytes of a JSON object (the header), then the data.
The header maps each tensor's name to {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}
(offsets into the data, which the tensors tile without gaps or overlaps) and may hold "__metadata__",
a map of strings to strings. The data is the tensors' bytes, little-endian, row-major.

  load_file(path) -> {name: numpy.ndarray}   BF16 comes back as float32 (exact: bf16 is float32's top half)
  metadata(path)  -> {str: str}              {} when the file has none
  save_file({name: ndarray}, path, metadata=None)

A malformed file raises ValueError naming the file and what is wrong. Callers that want torch tensors
convert with torch.from_numpy; this module imports numpy only.
Run `python3 tests/safetensors_np.py --self-test` to check it against its own writer."""
import json
import math
import os
import struct
import sys

import numpy as np

# safetensors dtype name -> numpy dtype of its stored bytes (little-endian)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# numpy kind+size -> safetensors dtype name, for the writer (numpy has no bfloat16)
_NAMES = {(d.kind, d.itemsize): name for name, d in _DTYPES.items() if name != "BF16"}


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _read(path):
    """(header dict without __metadata__, metadata dict, data bytes), validated."""
    with open(path, "rb") as f:
        raw = f.read()

    def bad(why):
        return ValueError(f"safetensors file '{path}': {why}")

    if len(raw) < 8:
        raise bad(f"{len(raw)} bytes, shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise bad(f"header length {n} exceeds the {len(raw) - 8} bytes after it")

    def no_duplicates(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise bad(f"header names '{k}' twice")
            seen[k] = v
        return seen

    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as e:
        raise bad(f"header is not UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")

    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("__metadata__ is not a map of strings to strings")

    data = memoryview(raw)[8 + n:]
    spans = []
    for name, e in header.items():
        if not isinstance(e, dict):
            raise bad(f"tensor '{name}': entry is not an object")
        missing = {"dtype", "shape", "data_offsets"} - e.keys()
        if missing:
            raise bad(f"tensor '{name}': no {', '.join(sorted(missing))}")
        dt, shape, off = e["dtype"], e["shape"], e["data_offsets"]
        if dt not in _DTYPES:
            raise bad(f"tensor '{name}': unsupported dtype {dt!r} (known: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor '{name}': shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(off, list) and len(off) == 2 and all(_is_int(o) for o in off)):
            raise bad(f"tensor '{name}': data_offsets {off!r} is not [begin, end]")
        begin, end = off
        if not 0 <= begin <= end <= len(data):
            raise bad(f"tensor '{name}': data_offsets [{begin}, {end}] outside the {len(data)} data bytes")
        want = _DTYPES[dt].itemsize * math.prod(shape)
        if end - begin != want:
            raise bad(f"tensor '{name}': {end - begin} bytes at data_offsets [{begin}, {end}], but {dt} of "
                      f"shape {shape} takes {want}")
        spans.append((begin, end, name))

    # The tensors tile the data: no overlap, no gap, nothing after the last one.
    at, last = 0, None
    for begin, end, name in sorted(spans):
        if begin < at:
            raise bad(f"tensor '{name}' (data_offsets [{begin}, {end}]) overlaps tensor '{last}'")
        if begin > at:
            raise bad(f"data bytes [{at}, {begin}) belong to no tensor (before tensor '{name}')")
        at, last = end, name
    if at != len(data):
        raise bad(f"data bytes [{at}, {len(data)}) belong to no tensor")
    return header, meta, data


def load_file(path):
    """{name: numpy array} of a safetensors file, in the header's order; each array owns its memory
    (native byte order, aligned, writable: torch.from_numpy takes it). BF16 is widened to float32."""
    header, _, data = _read(path)
    out = {}
    for name, e in header.items():
        dt = _DTYPES[e["dtype"]]
        begin, end = e["data_offsets"]
        a = np.frombuffer(data[begin:end], dtype=dt).astype(dt.newbyteorder("="))  # a copy
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.reshape(e["shape"])
    return out


def metadata(path):
    """The file's __metadata__ ({} when it has none)."""
    return _read(path)[1]


def save_file(tensors, path, metadata=None):
    """Writes {name: array} (anything numpy.asarray takes, of a dtype in the table above; not bfloat16)
    as a safetensors file: tensors in name order, the header padded with spaces to 8 bytes."""
    if metadata is not None and not (isinstance(metadata, dict) and
                                     all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError("safetensors metadata must be a map of strings to strings")
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r}: not a string, or reserved")
        a = np.asarray(tensors[name])
        dt = _NAMES.get((a.dtype.kind, a.dtype.itemsize))
        if dt is None:
            raise ValueError(f"tensor '{name}': numpy dtype {a.dtype} has no safetensors name")
        blob = np.ascontiguousarray(a, dtype=_DTYPES[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def _self_test():
    import tempfile
    checks = 0

    def ok(cond, what):
        nonlocal checks
        if not cond:
            raise AssertionError(what)
        checks += 1

    rng = np.random.default_rng(0)
    tensors = {
        "f64": rng.standard_normal((3, 2)), "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16), "i64": np.array([-2**62, 0, 2**62 + 7], np.int64),
        "i32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4), "i16": np.array([-32768, 32767], np.int16),
        "i8": np.array([-128, 0, 127], np.int8), "u8": np.arange(256, dtype=np.uint8), "u16": np.array([65535], np.uint16),
        "bool": np.array([[True, False], [False, True]]), "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32), "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
    }
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.safetensors")
        save_file(tensors, p, metadata={"examples": "450", "format": "pt"})
        back = load_file(p)
        ok(sorted(back) == sorted(tensors), "names")
        for k, v in tensors.items():
            ok(back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), f"tensor {k}")
            ok(back[k].flags.writeable and back[k].flags.aligned and back[k].dtype.isnative, f"tensor {k} usable")
        ok(metadata(p) == {"examples": "450", "format": "pt"}, "metadata")
        save_file({"x": np.ones(2, np.float32)}, p)
        ok(metadata(p) == {}, "no metadata")
        with open(p, "rb") as f:
            ok(struct.unpack("<Q", f.read(8))[0] % 8 == 0, "header padded to 8")

        # BF16, written by hand: the top halves of float32 values that bf16 holds exactly.
        want = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], np.float32)
        hdr = json.dumps({"b": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}).encode()
        with open(p, "wb") as f:
            f.write(struct.pack("<Q", len(hdr)) + hdr + (want.view(np.uint32) >> 16).astype("<u2").tobytes())
        b = load_file(p)["b"]
        ok(b.dtype == np.float32 and b.shape == (2, 3) and np.array_equal(b.ravel(), want), "BF16 widened")
        ok(np.signbit(b.ravel()[4]), "BF16 -0.0 keeps its sign")

        # Malformed files: each a ValueError that says what is wrong.
        def raw_file(header, data=b"", length=None):
            h = header if isinstance(header, bytes) else json.dumps(header).encode()
            with open(p, "wb") as f:
                f.write(struct.pack("<Q", len(h) if length is None else length) + h + data)

        def t(dtype="F32", shape=(2,), off=(0, 8)):
            return {"dtype": dtype, "shape": list(shape), "data_offsets": list(off)}

        cases = [
            (lambda: open(p, "wb").write(b"\x01\x00"), "shorter than its 8-byte header length"),
            (lambda: raw_file({"a": t()}, bytes(8), length=10**6), "exceeds"),
            (lambda: raw_file(b"[1, 2]"), "not an object"),
            (lambda: raw_file(b"{\"a\": "), "not JSON"),
            (lambda: raw_file(b"{\"a\": \xff}"), "not UTF-8"),
            (lambda: raw_file(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                              b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)), "twice"),
            (lambda: raw_file({"a": t("F8_E4M3")}, bytes(8)), "unsupported dtype"),
            (lambda: raw_file({"a": t(shape=(-1,))}, bytes(8)), "shape"),
            (lambda: raw_file({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)), "no data_offsets"),
            (lambda: raw_file({"a": t(off=(0, 8, 9))}, bytes(8)), "not [begin, end]"),
            (lambda: raw_file({"a": t(off=(0, 16))}, bytes(8)), "outside the 8 data bytes"),
            (lambda: raw_file({"a": t(off=(8, 0))}, bytes(8)), "outside"),
            (lambda: raw_file({"a": t(shape=(3,))}, bytes(8)), "takes 12"),
            (lambda: raw_file({"a": t(), "b": t(off=(4, 12))}, bytes(12)), "overlaps"),
            (lambda: raw_file({"a": t(off=(4, 12))}, bytes(12)), "belong to no tensor"),
            (lambda: raw_file({"a": t()}, bytes(12)), "[8, 12) belong to no tensor"),
            (lambda: raw_file({"__metadata__": {"n": 3}, "a": t()}, bytes(8)), "__metadata__"),
            (lambda: raw_file({"a": "F32"}, bytes(8)), "not an object"),
        ]
        for make, words in cases:
            make()
            for read in (load_file, metadata):
                try:
                    read(p)
                except ValueError as e:
                    ok(words in str(e) and p in str(e), f"{words!r} not in {e}")
                else:
                    raise AssertionError(f"no ValueError for a file that should say {words!r}")
        for bad_save, words in [(({"a": np.zeros(2, np.complex64)}, p), "has no safetensors name"),
                                (({"__metadata__": np.zeros(1)}, p), "reserved"),
                                (({"a": np.zeros(1)}, p, {"n": 3}), "strings to strings")]:
            try:
                save_file(*bad_save)
            except ValueError as e:
                ok(words in str(e), f"{words!r} not in {e}")
            else:
                raise AssertionError(f"save_file accepted what should say {words!r}")
    print(f"safetensors_np self-test: {checks} checks passed")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        _self_test()
    else:
        sys.exit(f"usage: {sys.argv[0]} --self-test")
