"""A small LLaVA-style multimodal LLM, a synthetic fine-grained VQA set, and Blink
(saliency-guided scanning with dynamic visual token resolution)."""
