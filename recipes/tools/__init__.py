"""The ``python -m recipes`` tools that are not Trainer entry points (``export``, ``personalize``, ``drift``,
``summary``, ``classify``, ``data``): one module each with ``main(argv) -> int``, their argument parsing
(``parser``) and the config loading they share (``config``)."""
