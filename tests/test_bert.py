"""mmgen.nn.bert: the plain-torch BERT computes what transformers' BertModel computes."""
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

PROMPTS = ["a large red circle moving right", "", "A big blue square going up, then down; and a tiny triangle!",
           "x " * 80]


def _reference(folder: Path, prompts, max_len):
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    batch = tok(prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return hidden, batch["attention_mask"], [len(tok(p)["input_ids"]) for p in prompts]


def _check(encoder, folder, max_len):
    assert encoder._plain  # the transformers-free path
    hidden, mask, counts = _reference(folder, PROMPTS, max_len)
    ours, our_mask = encoder._hidden(PROMPTS, max_len)
    assert torch.equal(our_mask, mask)
    real = mask[..., None]  # padding rows are zero in ours; the prefix and pooling ignore them
    assert torch.equal(ours, ours * real)
    torch.testing.assert_close(ours, hidden * real, rtol=0, atol=1e-5)
    assert [encoder.token_count(p) for p in PROMPTS] == counts


def test_tiny_random_bert_matches_transformers(tmp_path):
    from test_text_encoder import make_encoder

    from mmgen.ar.text_encoder import TextEncoder

    folder = make_encoder(tmp_path, "bert")
    _check(TextEncoder(folder), Path(folder), 12)


@pytest.mark.slow
def test_minilm_matches_transformers():
    from mmgen.ar.text_encoder import MINILM, TextEncoder, resolve

    _check(TextEncoder(MINILM), resolve(MINILM)[0], 40)
