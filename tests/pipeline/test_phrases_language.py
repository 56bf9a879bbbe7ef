"""The lines the agent says on its own follow the version's language (es, de, fr built in);
a version's own not-understood reply always wins, and English stays the default."""

from __future__ import annotations

import pytest

from runtime.control.schemas import NOT_UNDERSTOOD_REPLY, AgentConfig
from runtime.pipeline.settings import ConversationSettings, Phrases


@pytest.mark.parametrize(("language", "reprompt", "not_understood"), [
    ("es", "¿Sigue ahí?", "Perdone, no le he entendido."),
    ("es-MX", "¿Sigue ahí?", "Perdone, no le he entendido."),
    ("de", "Sind Sie noch da?", "Entschuldigung, das habe ich nicht verstanden."),
    ("fr", "Vous êtes toujours là ?", "Désolé, je n'ai pas compris."),
    ("en", "Are you still there?", NOT_UNDERSTOOD_REPLY),
    ("it", "Are you still there?", NOT_UNDERSTOOD_REPLY),  # none built in: English
])
def test_a_version_in_another_language_gets_the_built_in_lines_in_it(
        language: str, reprompt: str, not_understood: str) -> None:
    settings = ConversationSettings.from_config(AgentConfig(system_prompt="x", language=language))
    assert settings.phrases.reprompt == reprompt
    assert settings.not_understood_reply == not_understood


def test_the_version_s_own_reply_wins() -> None:
    own = AgentConfig(system_prompt="x", language="es", turn={"not_understood_reply": "¿Cómo dice?"})
    assert ConversationSettings.from_config(own).not_understood_reply == "¿Cómo dice?"
    off = AgentConfig(system_prompt="x", language="de", turn={"not_understood_reply": ""})
    assert ConversationSettings.from_config(off).not_understood_reply == ""  # "" = off, in any language


def test_the_duration_warning_speaks_the_language() -> None:
    assert Phrases.for_language("es").duration_warning(120) == "Nos quedan unos 2 minutos."
    assert Phrases.for_language("de").duration_warning(60) == "Wir haben noch etwa eine Minute."
    assert Phrases.for_language("fr").duration_warning(30) == "Il nous reste environ 30 secondes."
    assert Phrases().duration_warning(120) == "We have about two minutes left."
