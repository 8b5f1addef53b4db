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
#: training captions. Paraphrases of trained captions with unseen templates score ~0.8-0.95
#: against their nearest caption, other sentences about shapes ~0.5-0.7, unrelated text < 0.3.
FAR_SIMILARITY = 0.75


def prompt_report(model, prompts: Sequence[str]) -> tuple[dict[str, dict], list[str]]:
    """({prompt: {"nearest_training_caption", "nearest_similarity"}}, notes) for a VideoAR text model."""
    unique = list(dict.fromkeys(prompts))
    nearest = model.nearest_captions(unique) if unique else None
    counts = model.prompt_token_counts(unique)
    limit = model.config.max_text_len
    fields, notes = {}, []
    for i, prompt in enumerate(unique):
        caption, sim = nearest[i] if nearest else (None, None)
        fields[prompt] = {"nearest_training_caption": caption,
                          "nearest_similarity": None if sim is None else round(sim, 4)}
        if not prompt.strip():
            notes.append("the empty prompt gives an unconditional sample (no text condition)")
        elif counts[i] > limit:
            notes.append(f"prompt {prompt!r} is {counts[i]} tokens long; the model reads only the first "
                         f"{limit} (truncated)")
        if prompt.strip() and sim is not None and sim < FAR_SIMILARITY:
            notes.append(f"prompt {prompt!r} is far from anything the model was trained on (nearest: "
                         f"{caption!r}, similarity {sim:.2f}); expect it to be followed loosely")
    return fields, notes
