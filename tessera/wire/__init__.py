"""Tensors on the wire (no gRPC here).

Modules:
    codecs: the codec plugin family (none, fp16, bf16, int8, top-k) and error feedback.
    frames: tensor tables, chunking of payloads, and the preallocated receive buffer.
    stream: tensor tables to and from protobuf ``TensorSpec`` messages, and building and
        parsing chunk frames without extra copies.
"""
