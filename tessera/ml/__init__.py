"""Vetted models and data sets (pure torch; no gRPC, no code from the network).

Job specs name a model, a data set and an optimizer; every node builds them from this package,
so no code ever travels.

Modules:
    datasets: the classification data sets (``DATASETS``, e.g. the 8x8 digits) and text corpora
        (``CORPORA``) every node can load offline, ``load_data`` for either, and the
        deterministic choice of each task's batch (``task_batch_indices``,
        ``task_window_starts``).
    text: the ``"stdlib"`` byte corpus: the Python standard library's sources, split by file.
    federated: Dirichlet non-IID partitions (Hsu et al. 2019) and ``load_local_dataset`` for the
        ``"local"`` data a worker keeps to itself.
    zoo: the model registry: ``mlp``, ``cnn`` and the byte-level ``gpt`` (Vaswani et al. 2017;
        Radford et al. 2019), built by ``build_model(name, ModelSpec)``.
    objectives: batches, loss and held-out metrics per kind of data (classification, language
        modelling) behind one ``Objective`` protocol; ``objective_for(data, spec)`` picks one.
    training: gradients, optimizers (adam, adamw, sgd, nesterov), optimizer steps and
        evaluation shared by worker and aggregator.
    checkpoint: safetensors checkpoints (``save_model`` / ``load_model``), no pickle.
"""
