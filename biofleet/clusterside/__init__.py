"""Programs that run on the cluster, where biofleet itself may not be installed.

Each module here uses the standard library only (``hub_fetch`` also needs
``huggingface_hub``, which vLLM environments have). Their source travels with what
biofleet sends: :mod:`jobkit` is embedded in every rendered job script, ``hub_fetch``
is piped to the cluster's interpreter. They are linted, typed and tested like the rest,
and biofleet's own code imports them where it writes the same records.
"""
