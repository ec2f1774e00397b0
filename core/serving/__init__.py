"""``tuneforge serve``: an OpenAI-compatible HTTP server for tuned runs (docs/serving.md).

* :mod:`.adapters`: the runs being served, one base model with each run's adapter loaded by name
  (peft multi-adapter), and ``base`` for the model with no adapter;
* :mod:`.schemas`: the request bodies the endpoints take and the OpenAI error shape;
* :mod:`.decoding`: one batch of sequences generated with ``model.generate``, each streamed,
  stopped and counted on its own;
* :mod:`.batching`: the bounded queue and the one worker thread that owns the model and puts
  requests that arrive together into one batch;
* :mod:`.app`: the FastAPI application (routes, API key, body size limit, server-sent events).

FastAPI and uvicorn come with the ``serve`` extra (``pip install tuneforge[serve]``); nothing
here is imported unless ``tuneforge serve`` runs.
"""
