"""The platform every service stands on (runtime, bus, store, the flow's object keys, model cache,
config, errors, images, observability, dead letters), the shared arithmetic (``arith/``), the renderer
(``synth/``) and the model libraries (``matting/``, ``captioning/``, ``generation/``, ``gate/``,
``trainstore/``)."""
