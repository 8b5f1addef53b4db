"""Inference pipelines (diffusers conventions): prompt / class id -> video, video extension."""
from mmgen.pipelines.videoar import VideoARPipeline, VideoARPipelineOutput, to_uint8_videos

__all__ = ["VideoARPipeline", "VideoARPipelineOutput", "to_uint8_videos"]
