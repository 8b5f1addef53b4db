"""Pretrained text encoders in VideoAR's condition path, on tiny random encoders built in code."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmgen.ar.model import VideoAR  # noqa: E402
from mmgen.ar.text_encoder import TextEncoderError, WEIGHTS  # noqa: E402

WORDS = ("a the small large tiny big red green blue white circle square triangle diamond moving going "
         "left right up down and bouncing still").split()


def _tokenizer(folder, kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(special + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":  # [CLS] ... [SEP], like BERT; T5/CLIP-style end with [SEP] only
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A [SEP]", special_tokens=[("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(folder)
    return len(vocab)


def make_encoder(folder, kind="bert", seed=0):
    torch.manual_seed(seed)
    n = _tokenizer(folder, kind)
    if kind == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            vocab_size=n, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64))
    elif kind == "t5":
        model = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=n, d_model=24, d_kv=8, d_ff=48, num_layers=1, num_heads=3, pad_token_id=0, eos_token_id=3))
    else:
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3))
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def tiny_model(encoder, **kw):
    torch.manual_seed(0)
    args = dict(bits=8, scales=[[1, 1], [2, 2]], num_frames=2, width=32, depth=2, heads=2, max_text_len=12,
                text_encoder=encoder, attn_backend="sdpa")
    return VideoAR(**{**args, **kw})


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("bert"), "bert")


def _inputs(model, batch):
    layout = model.layout()
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, layout.num_frames, h, w, model.config.bits, generator=g) for h, w in model.scales]


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_other_encoder_families_give_padded_token_states(tmp_path, kind):
    model = tiny_model(make_encoder(tmp_path, kind))
    tokens = model.condition_tokens(["a red circle moving left", "big blue square"])
    assert tokens.shape == (2, 12, model.text_encoder.dim)
    real = tokens.ne(0).any(-1).sum(1).tolist()
    assert real == [6, 4]  # the words + the end token; the rest is zero padding


def test_prefix_is_projected_states_with_learned_padding(bert):
    model = tiny_model(bert)
    tokens = model.condition_tokens(["a red circle moving left"])
    assert tokens.shape == (1, 12, 32) and tokens.ne(0).any(-1).sum() == 7  # [CLS] 5 words [SEP]
    prefix = model.embed_condition(tokens)
    assert torch.equal(prefix[0, 7:], model.cond_pad.expand(5, -1))
    assert not torch.equal(prefix[0, 0], prefix[0, 1])
    # the frozen encoder's weights stay out of the generator's state
    assert not any(k.startswith("text_encoder") for k in model.state_dict())


def test_null_condition_empty_prompt_or_learned(bert):
    empty = tiny_model(bert)
    assert torch.equal(empty.null_condition(2), empty.condition_tokens(["", ""]))
    assert empty.null_condition(1).ne(0).any(-1).sum() == 2  # [CLS] [SEP]
    learned = tiny_model(bert, text_null="learned")
    null = learned.embed_condition(learned.null_condition(1))
    assert torch.equal(null[0], learned.cond_pad.expand(12, -1))
    with pytest.raises(ValueError, match="text_null"):
        tiny_model(bert, text_null="zeros")


def test_cached_decoding_matches_teacher_forcing(bert):
    model = tiny_model(bert).eval()
    prompts = ["a red circle moving left", "the big white diamond bouncing"]
    inputs = _inputs(model, 2)
    with torch.no_grad():
        full = model(prompts, inputs)
        cache = model.new_cache(2)
        model.prefill(cache, prompts)
        steps = [model.forward_group(cache, None if (t, k) == (0, 0) else inputs[k][:, t], t, k)
                 for t in range(2) for k in range(2)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # encoded prompts are accepted as they are (training caches, CFG batches)
    encoded = model.condition_tokens(prompts)
    torch.testing.assert_close(model(encoded, inputs), full)
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(2, 12, dtype=torch.long), inputs)


def test_encoder_hash_is_recorded_and_checked(bert, tmp_path):
    model = tiny_model(bert)
    sha = model.config.text_encoder_sha256
    assert len(sha) == 64
    model.remember_captions(["a red circle moving left", "a big blue square moving up", "a red circle moving left"])
    model.save_pretrained(tmp_path / "gen")
    loaded = VideoAR.from_pretrained(tmp_path / "gen")
    assert loaded.config.train_captions == ["a big blue square moving up", "a red circle moving left"]
    inputs = _inputs(model, 1)
    torch.testing.assert_close(loaded(["a red circle"], inputs), model(["a red circle"], inputs))
    (nearest, sim), = loaded.nearest_captions(["the red circle going left"])
    assert nearest == "a red circle moving left" and 0.5 < sim <= 1.0001
    with pytest.raises(TextEncoderError, match="sha256"):
        tiny_model(bert, text_encoder_sha256="0" * 64)
    other = make_encoder(tmp_path / "other", "bert", seed=1)  # same config, other weights
    with pytest.raises(TextEncoderError, match="sha256"):
        VideoAR.from_pretrained(tmp_path / "gen", text_encoder=other)


def test_encoder_folder_errors(bert, tmp_path):
    with pytest.raises(TextEncoderError, match="does not exist"):
        tiny_model(str(tmp_path / "missing"))
    folder = tmp_path / "bin_only"
    make_encoder(folder, "bert")
    (folder / WEIGHTS).unlink()
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(TextEncoderError, match="only safetensors"):
        tiny_model(str(folder))


def test_long_prompts_are_truncated_and_counted(bert):
    model = tiny_model(bert)
    long = " ".join(["a red circle moving left and"] * 4) + " a blue square"
    (count,) = model.prompt_token_counts([long])
    assert count > model.config.max_text_len
    tokens = model.condition_tokens([long])
    assert tokens.ne(0).any(-1).all()  # every prefix position used, nothing beyond
    # a pretrained tokenizer takes non-ASCII text (unknown words become [UNK])
    assert model.condition_tokens(["un cercle rouge été"]).ne(0).any(-1).sum() == 6


def test_byte_encoder_refuses_non_ascii():
    model = VideoAR(bits=8, scales=[[1, 1]], num_frames=1, width=32, depth=1, heads=2, max_text_len=16)
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        model.condition_tokens(["un cercle rouge été"])
    assert model.nearest_captions(["a red circle"]) is None


def test_sample_cli_notes_and_nearest_caption_sidecar(bert, tmp_path, capsys, monkeypatch):
    import json

    from mmgen.pipelines import prompts

    from mmgen.cli import main as mmgen_main
    from mmgen.pipelines.videoar import VideoARPipeline
    from mmgen.tokenizer.model import VideoTokenizer

    torch.manual_seed(0)
    tok = VideoTokenizer(base_channels=8, channel_mult=(1, 1, 1), temporal_downsample=(True, True), patch_size=1,
                         norm_groups=4, latent_dim=4, scales=(1, 2, 4), sample_size=16, num_frames=9)
    gen = VideoAR(bits=4, scales=[(1, 1), (2, 2), (4, 4)], num_frames=3, width=32, depth=2, heads=2,
                  max_text_len=8, text_encoder=bert, attn_backend="sdpa")
    gen.remember_captions(["a red circle moving left", "a big blue square moving up"])
    VideoARPipeline(tokenizer=tok.eval(), transformer=gen.eval(), fps=8).save_pretrained(tmp_path / "m")
    long = "a red circle moving left and a big blue square moving up"
    # a random encoder's sentence embeddings are all alike: only an exact caption is "near"
    monkeypatch.setattr(prompts, "FAR_SIMILARITY", 0.999)
    rc = mmgen_main(["sample", "--model", str(tmp_path / "m"), "--prompt", "a red circle moving left",
                     "--prompt", "", "--prompt", long, "--prompt", "white diamond bouncing", "--num-frames", "5",
                     "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "empty prompt gives an unconditional sample" in err
    assert f"prompt {long!r} is 14 tokens long; the model reads only the first 8 (truncated)" in err
    assert "'white diamond bouncing' is far from anything the model was trained on" in err
    assert "'a red circle moving left' is far" not in err
    metas = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    assert metas[0]["nearest_training_caption"] == "a red circle moving left"
    assert metas[0]["nearest_similarity"] == pytest.approx(1.0, abs=1e-3)
    assert metas[3]["nearest_similarity"] < 0.999


def test_caption_encodings_stored_in_the_latent_cache(bert, tmp_path):
    import json

    from safetensors.torch import save_file

    from mmgen.data.latents import LatentCache

    caps = ["a red circle moving left", "big blue square", "a red circle moving left"]
    save_file({"latent": torch.zeros(3, 4, 3, 2, 2, dtype=torch.float16), "label": torch.zeros(3, dtype=torch.long)},
              str(tmp_path / "shard-00000.safetensors"))
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    (tmp_path / "meta.json").write_text(json.dumps({"num_samples": 3, "latent_shape": [4, 3, 2, 2],
                                                    "shards": ["shard-00000.safetensors"]}))
    cache = LatentCache(str(tmp_path), latent_frames=1)
    assert cache[0]["latent"].shape == (4, 1, 2, 2)
    encoder = tiny_model(bert).text_encoder
    assert cache.load_text_encodings(encoder.sha256, 12) is None
    unique = sorted(set(caps))
    cache.save_text_encodings(encoder.sha256, 12, unique, encoder.encode(unique, 12))
    names, hidden = cache.load_text_encodings(encoder.sha256, 12)
    assert names == unique and hidden.dtype == torch.float16 and hidden.shape == (2, 12, encoder.dim)
    torch.testing.assert_close(hidden.float(), encoder.encode(unique, 12), atol=1e-2, rtol=1e-2)
    marker = torch.full((1, 12, encoder.dim), 7.0)
    encoder.prime(["never encoded"], marker, 12)  # primed prompts are memo hits, not re-encoded
    assert torch.equal(encoder.encode(["never encoded"], 12), marker)


@pytest.mark.slow
def test_shipped_model_names_the_nearest_of_its_captions():
    """The real MiniLM (pinned package, hash-checked) measures prompts against the shipped captions."""
    from pathlib import Path

    from mmgen.pipelines.prompts import FAR_SIMILARITY, prompt_report

    model = VideoAR.from_pretrained(Path(__file__).parent.parent / "mmgen/assets/default/transformer")
    fields, notes = prompt_report(model, ["a red circle moving right", "a purple hexagon spinning slowly"])
    near = fields["a red circle moving right"]
    assert near["nearest_training_caption"] in model.config.train_captions
    assert all(w in near["nearest_training_caption"].lower() for w in ("red", "circle", "right"))
    assert near["nearest_similarity"] > FAR_SIMILARITY
    assert fields["a purple hexagon spinning slowly"]["nearest_similarity"] < FAR_SIMILARITY
    assert len(notes) == 1 and "far from anything" in notes[0]
