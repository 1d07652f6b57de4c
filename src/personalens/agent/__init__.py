"""PersonaAgent: a per-user agent whose system prompt is the persona, with episodic and semantic memory, tools, an
action loop and test-time alignment of the persona (``align_persona``)."""
