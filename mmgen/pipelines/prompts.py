"""What a text model makes of each prompt, told to the user before sampling.

:func:`prompt_report` gives, per distinct prompt, the nearest caption the generator was trained
on with its similarity (recorded in the sample's sidecar), and one-line notes for prompts the
user should know about: the empty prompt (an unconditional sample), a prompt longer than the
text prefix (truncated), and a prompt far from every training caption (the model was never
taught it; expect it to be followed loosely, if at all).
"""
from __future__ import annotations

from collections.abc import Sequence

#: Cosine similarity (MiniLM sentence embeddings) below which a prompt counts as far from the
#: training captions. Against the first default model's 32 captions: a dropped word 0.94,
#: "there is ..." 0.97, synonyms ("A big red circle going to the right.") 0.81, another shape
#: ("a large blue square moving up") 0.77, another shape and size 0.75, another shape and
#: motion 0.43, unrelated text 0.31. Sentence embeddings hardly see a swapped shape word, so
#: the bar sits high.
FAR_SIMILARITY = 0.85


def prompt_report(model, prompts: Sequence[str]) -> tuple[dict[str, dict], list[str]]:
    """({prompt: {"nearest_training_caption", "nearest_similarity"}}, notes) for a VideoAR text model
    (no fields when the model has no recorded training captions)."""
    from mmgen.ar.text_encoder import TextEncoderError

    unique = list(dict.fromkeys(prompts))
    notes = []
    try:
        nearest = model.nearest_captions(unique) if unique else None
    except TextEncoderError as exc:  # a byte-level model samples fine without its similarity encoder
        nearest = None
        notes.append(f"cannot tell how close the prompts are to the training captions: {exc}")
    counts = model.prompt_token_counts(unique)
    limit = model.config.max_text_len
    fields = {}
    for i, prompt in enumerate(unique):
        caption, sim = nearest[i] if nearest else (None, None)
        if nearest:  # models that recorded their training captions
            fields[prompt] = {"nearest_training_caption": caption, "nearest_similarity": round(sim, 4)}
        if not prompt.strip():
            notes.append("the empty prompt gives an unconditional sample (no text condition)")
        elif counts[i] > limit:
            notes.append(f"prompt {prompt!r} is {counts[i]} tokens long; the model reads only the first "
                         f"{limit} (truncated)")
        if prompt.strip() and sim is not None and sim < FAR_SIMILARITY:
            notes.append(f"prompt {prompt!r} is far from anything the model was trained on (nearest: "
                         f"{caption!r}, similarity {sim:.2f}); expect it to be followed loosely")
    return fields, notes
