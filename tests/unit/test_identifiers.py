"""One quoting rule for every SQL identifier the code writes."""

from totes.identifiers import quote, quote_all


def test_identifiers_are_double_quoted_with_inner_quotes_doubled():
    assert quote("transaction") == '"transaction"'
    assert quote("PaymentTypeName") == '"PaymentTypeName"'
    assert quote('odd"name') == '"odd""name"'


def test_a_list_is_quoted_and_optionally_qualified():
    assert quote_all(["a", "b"]) == '"a", "b"'
    assert quote_all(["a", "b"], alias="s") == 's."a", s."b"'
    assert quote_all([]) == ""
