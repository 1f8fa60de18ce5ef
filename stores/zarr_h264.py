"""`motionssl.h264` as a zarr v3 codec, so plain zarr-python reads (and writes) H.264-coded chunks.

Registered through the `zarr.codecs` entry point in pyproject.toml (zarr loads it when an array names the
codec) and by importing this module. The chunk bytes are `motionssl.stores.h264`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

from motionssl.stores.h264 import CODEC_NAME, ChunkCoder

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec


@dataclass(frozen=True)
class H264Codec(ArrayBytesCodec):
    """Each chunk (n, H, W, ...) uint8 as one independent H.264 stream; configuration: layout, crf."""

    is_fixed_size = False
    layout: str = "rgb"
    crf: int = 12

    @classmethod
    def from_dict(cls, data: dict) -> H264Codec:
        coder = ChunkCoder.from_dict(data)
        return cls(layout=coder.layout, crf=coder.crf)

    def to_dict(self) -> dict:
        return ChunkCoder(self.layout, self.crf).to_dict()

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME} codes uint8 arrays only")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        frames = ChunkCoder(self.layout, self.crf).decode(chunk_bytes.to_bytes(), chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(frames)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = ChunkCoder(self.layout, self.crf).encode(np.asarray(chunk_array.as_numpy_array(), np.uint8))
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("H.264 chunk sizes depend on their content")


register_codec(CODEC_NAME, H264Codec)
