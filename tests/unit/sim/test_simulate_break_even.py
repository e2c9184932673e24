"""The simulate summary's break-even line: the same tokens at an API's prices against the cost here."""

from exporter.attribution.api_prices import parse_api_prices
from exporter.attribution.pricing import ELECTRICITY, RENTAL
from exporter.attribution.token_class import IDLE, INPUT, OUTPUT, TokenClass
from exporter.simulate import break_even_lines

COST = {
    ("m", INPUT, RENTAL): 1.0,
    ("m", OUTPUT, RENTAL): 2.0,
    ("m", IDLE, RENTAL): 1.0,
    ("m", OUTPUT, ELECTRICITY): 0.5,
    ("m", IDLE, ELECTRICITY): 0.5,
}  # rental 4, electricity 1 for 100 J of which 50 J at idle power: fixed 4.5, variable 0.5
ENERGY, STATIC = 100.0, 50.0
TOKENS: dict[TokenClass, float] = {INPUT: 1e6, OUTPUT: 1e6}


def test_the_line_says_the_api_cost_the_cost_here_and_where_they_meet():
    cheap, dear = parse_api_prices("cheap=1/0.5/1,dear=2/1/8", "USD")
    low, high = break_even_lines(COST, TOKENS, ENERGY, STATIC, "USD", (cheap, dear))
    # cheap: 2 at the API against 5 here; they meet at 4.5 / (2 - 0.5) = 3x the traffic
    assert low == (
        "break-even vs cheap: this traffic costs 2 USD there, 5 here (2.50x, saving -3); "
        "self-hosting breaks even at 3x this traffic"
    )
    # dear: 10 at the API; 4.5 / 9.5 = 0.47x
    assert high.startswith("break-even vs dear: this traffic costs 10 USD there, 5 here (0.50x, saving +5)")
    assert high.endswith("breaks even at 0.47x this traffic")


def test_an_api_below_the_tokens_energy_never_breaks_even_and_no_tokens_says_so():
    (free,) = parse_api_prices("free=0/0/0.4", "USD")  # 0.4 for the output, whose energy costs 0.5
    assert break_even_lines(COST, TOKENS, ENERGY, STATIC, "USD", (free,))[0].endswith(
        "never breaks even (the API costs less than the tokens' own electricity)"
    )
    assert break_even_lines(COST, {}, ENERGY, STATIC, "USD", (free,)) == ["break-even vs free: no tokens yet"]
    assert break_even_lines(COST, TOKENS, ENERGY, STATIC, "USD", ()) == []
    (nothing,) = parse_api_prices("nothing=0/0/0", "USD")
    assert break_even_lines(COST, TOKENS, ENERGY, STATIC, "USD", (nothing,)) == [
        "break-even vs nothing: the list prices these tokens at 0"
    ]
