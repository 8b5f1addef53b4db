"""Video tokenizer: causal 3D autoencoder + multi-scale residual quantizers (VideoAR section 1)."""
from mmgen.tokenizer.inflate import inflate_2d_state_dict, inflate_into
from mmgen.tokenizer.layers import StreamState
from mmgen.tokenizer.model import VideoTokenizer, config_mismatches, resolved_config
from mmgen.tokenizer.quantizer import (
    BitwiseResidualQuantizer,
    IndexResidualQuantizer,
    QuantizerOutput,
    as_scale_pairs,
)

__all__ = [
    "BitwiseResidualQuantizer",
    "IndexResidualQuantizer",
    "QuantizerOutput",
    "StreamState",
    "VideoTokenizer",
    "as_scale_pairs",
    "config_mismatches",
    "inflate_2d_state_dict",
    "inflate_into",
    "resolved_config",
]
