"""HTTP routes of the policy service, one module per resource.

Path parameters that name a program or an account use the ``raw`` convertor: it captures
anything (``a/b``, ``../x``, CR/LF) so the name rules can refuse it with a message that
says what to fix, instead of the request falling through to "no such endpoint".
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class RawConvertor(Convertor[str]):
    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("raw", RawConvertor())
