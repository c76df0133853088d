"""The Durable Task engine as the app uses it: its settings, the one module that builds clients
and workers from them, the on-time worker and the embedded engine. Imports only leaves."""
