"""Cost of a request from its real usage, from a price table the user can override."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import yaml

_DEFAULT_TABLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "prices.yaml")
_PER_MILLION = 1_000_000.0


class PriceError(ValueError):
    """The price table is unusable or lacks the model."""


@dataclasses.dataclass(frozen=True)
class ModelPrice:
    input: float
    output: float
    cache_read_multiplier: float


@dataclasses.dataclass(frozen=True)
class PriceTable:
    version: str
    batch_discount: float
    cache_write_multiplier: Mapping[str, float]
    models: Mapping[str, ModelPrice]

    def price(self, model: str) -> ModelPrice:
        try:
            return self.models[model]
        except KeyError:
            raise PriceError(
                f"no price for model {model!r} in price table {self.version}; "
                f"add it with --prices FILE (known: {sorted(self.models)})") from None

    def cost(self, model: str, usage: Mapping[str, Any], *, batch: bool,
             cache_ttl: str = "5m") -> float:
        """USD for one request (or a share of one) from its usage counters.

        Batch requests get the batch discount on every kind of token; cache
        writes and reads are priced as multiples of the base input price.
        """
        p = self.price(model)
        scale = self.batch_discount if batch else 1.0
        write_mult = self.cache_write_multiplier.get(cache_ttl, 1.25)
        get = usage.get  # inline, not a helper per counter: this runs twice per result row
        usd = (
            int(get("input_tokens") or 0) * p.input
            + int(get("cache_creation_input_tokens") or 0) * p.input * write_mult
            + int(get("cache_read_input_tokens") or 0) * p.input * p.cache_read_multiplier
            + int(get("output_tokens") or 0) * p.output
        )
        return usd * scale / _PER_MILLION


def load_prices(path: Optional[str] = None) -> PriceTable:
    """The built-in table, or the user's file (local or gs://) when given."""
    if path:
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(path) as f:
            data = yaml.safe_load(f.read().decode("utf-8"))
    else:
        with open(_DEFAULT_TABLE, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    try:
        models = {name: ModelPrice(float(v["input"]), float(v["output"]),
                                   float(v.get("cache_read_multiplier", 0.1)))
                  for name, v in data["models"].items()}
        return PriceTable(version=str(data["version"]),
                          batch_discount=float(data.get("batch_discount", 0.5)),
                          cache_write_multiplier=dict(data.get("cache_write_multiplier") or {"5m": 1.25, "1h": 2.0}),
                          models=models)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PriceError(f"price table {path or _DEFAULT_TABLE} is malformed: {e!r}") from e
