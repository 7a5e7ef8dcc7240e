"""The node agent: a reconcile loop that re-reads the control plane every cycle, applies the
difference, and only then heartbeats; a ``/healthz`` computed in each request; the agent SDK.

Modules: ``plan`` (pure decisions and schedule), ``actuators`` (how a document becomes real),
``state`` (applied revision on disk), ``loop`` (``ReconcileLoop``), ``health`` (``/healthz``),
``sdk`` (liveness for your own workers), ``service`` (process wiring), ``settings``.
"""
