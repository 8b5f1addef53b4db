import pytest
import torch

from mmgen.ar import text


def test_encode_decode_roundtrip_and_padding():
    ids = text.encode("a red circle", 16)
    assert ids.shape == (16,) and ids.dtype == torch.long
    assert ids[:2].tolist() == [ord("a"), ord(" ")]
    assert (ids[12:] == text.PAD_ID).all()
    assert text.decode(ids) == "a red circle"
    assert text.encode_batch(["ab", ""], 4).tolist() == [[97, 98, 256, 256], [256] * 4]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'\\n' \(U\+000A\) at position 1"):
        text.encode("a\nb", 8)
    with pytest.raises(ValueError, match="9 characters long; this model accepts at most 8"):
        text.encode("abcdefghi", 8)
    with pytest.raises(TypeError):
        text.encode_batch("abc", 8)
