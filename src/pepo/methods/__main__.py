"""``python -m pepo.methods``: print the Markdown table of the built-in methods (the README's method table)."""

from pepo.methods import method_table

print(method_table())
