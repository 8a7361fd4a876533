import pytest

from transforms.api.costs import PriceError, load_prices


def test_batch_is_half_price_and_cache_multipliers_apply():
    prices = load_prices()
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000,
             "cache_creation_input_tokens": 1_000_000, "cache_read_input_tokens": 1_000_000}
    # haiku 4.5: 1 in, 5 out, write 1.25x, read 0.1x
    standard = prices.cost("claude-haiku-4-5", usage, batch=False)
    assert standard == pytest.approx(1 + 5 + 1.25 + 0.1)
    assert prices.cost("claude-haiku-4-5", usage, batch=True) == pytest.approx(standard / 2)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(PriceError, match="no price for model 'nope'"):
        load_prices().price("nope")


def test_user_table_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('version: "mine"\nmodels:\n  m: {input: 2, output: 4}\n')
    prices = load_prices(str(path))
    assert prices.version == "mine"
    assert prices.cost("m", {"input_tokens": 500_000, "output_tokens": 250_000}, batch=False) == pytest.approx(2.0)


def test_malformed_table_is_a_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("models: [1, 2]\n")
    with pytest.raises(PriceError, match="malformed"):
        load_prices(str(path))
