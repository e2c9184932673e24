"""Reference API price lists: parsing that refuses what cannot be compared, and the break-even."""

import math

import pytest

from exporter.attribution.api_prices import MAX_REFERENCES, ApiPrice, break_even, fixed_and_variable, parse_api_prices
from exporter.attribution.token_class import CACHED_INPUT, IDLE, INPUT, OUTPUT


def test_lists_are_parsed_in_order_with_the_exporters_currency():
    small, large = parse_api_prices(" small = 0.15/0.075/0.6 , large=2.5/1.25/1e1@USD", "USD")
    assert small == ApiPrice("small", "USD", {INPUT: 0.15, CACHED_INPUT: 0.075, OUTPUT: 0.6})
    assert large.per_million == {INPUT: 2.5, CACHED_INPUT: 1.25, OUTPUT: 10.0}


def test_nothing_given_is_no_list():
    assert parse_api_prices("", "USD") == ()
    assert parse_api_prices(" , ", "USD") == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("small", "expected NAME=INPUT/CACHED_INPUT/OUTPUT"),
        ("=1/1/1", "expected NAME="),
        ("bad name=1/1/1", "expected NAME="),
        ('x"}=1/1/1', "expected NAME="),
        ("small=0.15/0.6", "three prices"),
        ("small=1/1/-1", "three prices"),
        ("small=1/1/nan", "three prices"),
        ("small=1/1/inf", "three prices"),
        ("small=1/1/1e400", "between 0 and"),
        ("small=1/1/2e6", "between 0 and"),
        ("small=1/1/1@EUR", "priced in EUR, but costs are counted in USD"),
        ("a=1/1/1,a=2/2/2", "named twice"),
    ],
)
def test_what_cannot_be_compared_is_refused_with_a_reason(text, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        parse_api_prices(text, "USD")


def test_the_number_of_lists_is_bounded():
    text = ",".join(f"p{i}=1/1/1" for i in range(MAX_REFERENCES + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_REFERENCES}"):
        parse_api_prices(text, "USD")
    assert len(parse_api_prices(text.rsplit(",", 1)[0], "USD")) == MAX_REFERENCES


def test_the_api_cost_prices_each_class_and_ignores_idle():
    price = ApiPrice("p", "USD", {INPUT: 1.0, CACHED_INPUT: 0.5, OUTPUT: 4.0})
    assert price.cost({INPUT: 2e6, CACHED_INPUT: 2e6, OUTPUT: 1e6, IDLE: 9e9}) == 2 + 1 + 4
    assert price.cost({OUTPUT: 1e6}) == 4


def test_break_even_is_the_traffic_where_fixed_plus_variable_meets_the_api():
    price = ApiPrice("p", "USD", {INPUT: 1.0, CACHED_INPUT: 0.5, OUTPUT: 4.0})
    tokens = {INPUT: 1e6, OUTPUT: 1e6}  # 5 at the API
    found = break_even(tokens, fixed_cost=6.0, variable_cost=1.0, price=price)
    assert (found.api_cost, found.self_cost, found.saving) == (5.0, 7.0, -2.0)
    k = found.traffic_multiple
    assert k == 1.5 and math.isclose(6.0 + k * 1.0, k * 5.0)  # both cost 7.5 at 1.5x the traffic


def test_an_api_cheaper_than_the_tokens_own_energy_never_breaks_even():
    price = ApiPrice("p", "USD", {INPUT: 0.0, CACHED_INPUT: 0.0, OUTPUT: 1.0})
    found = break_even({OUTPUT: 1e6}, fixed_cost=1.0, variable_cost=2.0, price=price)
    assert found.traffic_multiple is None and found.saving == -2.0


def test_idle_level_power_is_fixed_and_only_the_energy_above_it_grows_with_traffic():
    # 10 rental, 2 electricity for 400 J of which 100 J is idle power over the time: fixed 10.5.
    assert fixed_and_variable(10.0, 2.0, 400.0, 100.0) == (10.5, 1.5)
    assert fixed_and_variable(10.0, 2.0, 400.0, 900.0) == (12.0, 0.0)  # never more than all of it
    assert fixed_and_variable(10.0, 2.0, 0.0, 0.0) == (12.0, 0.0)  # no energy seen yet: all fixed
