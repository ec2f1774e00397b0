"""``tuneforge plan``: a run's memory per device, estimated from its config before anything loads.

- :mod:`tuneforge.planning.sizes`     byte sizes: ``24GiB`` parsed, bytes printed
- :mod:`tuneforge.planning.model_facts` the model's parameter counts, from its architecture on the meta device
  with the selected adapter really applied (no weights read)
- :mod:`tuneforge.planning.memory`    the estimate: weights, trainable weights, gradients, optimizer state,
  activations and the runtime, per device, for the run's batch, length, precision, quantization,
  gradient checkpointing and strategy
- :mod:`tuneforge.planning.device`    the memory of the device the run will use (or ``plan.device_memory``)
- :mod:`tuneforge.planning.plan`      the plan of a composed run, the changes that make it fit, the table;
  the warning ``train`` logs

docs/memory.md explains the estimate and compares it with measured peaks.
"""
