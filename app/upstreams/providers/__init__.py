"""Model providers' realtime protocols: pure translation between this protocol and each provider's.

    translator_for(session)     the provider's Translator for one session (state, no I/O)
    Translator.opening()        the messages that configure the provider's session
    Translator.acknowledges(m)  whether `m` is the provider's acknowledgement of that configuration
    Translator.to_provider(e)   one client event as provider messages (UnsupportedEventError if none)
    Translator.from_provider(m) one provider message as server events; None: no counterpart (dropped)

The I/O around a translator (sockets, timeouts, metrics) is `app.upstreams.providers.adapter` and
the modules it uses (`connection`, `resumption`, `link`, `silence`).
"""

from __future__ import annotations

from app.session.upstream import SessionInfo
from app.upstreams.providers.base import PROVIDERS, Translator


def translator_for(session: SessionInfo) -> Translator:
    """The translator of the provider the session's model names (`openai/...`, `xai/...`, `gemini/...`).

    Raises:
        KeyError: the model's provider is not one of PROVIDERS.
    """
    provider = session.model.provider
    if provider == "gemini":
        from app.upstreams.providers.gemini import GeminiTranslator

        return GeminiTranslator(session.config, session.model, usage=session.usage)
    if provider in PROVIDERS:
        from app.upstreams.providers.openai import OpenAITranslator

        return OpenAITranslator(session.config, session.model, provider=provider, usage=session.usage)
    raise KeyError(provider)


__all__ = ["PROVIDERS", "Translator", "translator_for"]
