"""Writes TensorBoard's own message definitions (the event file's Event and Summary, with every file
they import) as a protobuf FileDescriptorSet, for protoc to compile into C++ (observe/CMakeLists.txt:
protoc --descriptor_set_in). The definitions come from the installed `tensorboard` package (PyPI),
whose generated modules carry them, so allround's event files are encoded by TensorBoard's very
schema, not by a copy of it.

Usage: tensorboard_descriptors.py OUT_DIR  ->  OUT_DIR/tensorboard.desc and OUT_DIR/protos.txt (the
.proto names to compile, one per line, dependencies first). Exit 1, with the reason, when the
package is missing."""
import os
import sys

try:
    from google.protobuf import descriptor_pb2
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401 (summary: Event's payload)
except Exception as e:  # ImportError, or a protobuf runtime the package does not accept
    print(f"no tensorboard package: {e}", file=sys.stderr)
    sys.exit(1)


def main(out_dir):
    files, order = {}, []

    def visit(fd):
        if fd.name in files:
            return
        for dep in fd.dependencies:
            visit(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files[fd.name] = proto
        order.append(fd.name)

    visit(event_pb2.DESCRIPTOR)
    visit(summary_pb2.DESCRIPTOR)
    out = descriptor_pb2.FileDescriptorSet()
    out.file.extend(files[name] for name in order)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tensorboard.desc"), "wb") as f:
        f.write(out.SerializeToString())
    with open(os.path.join(out_dir, "protos.txt"), "w") as f:
        f.write("".join(name + "\n" for name in order))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
