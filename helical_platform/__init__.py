"""The Helical AI Platform from Python: AnnData in, AnnData out.

    import helical_platform as hp
    annotated = hp.annotate(adata, model="geneformer", reference=ref, label_column="cell_type")

Runs on this process's Platform (SQLite + a Dask ``LocalCluster`` started on first use, or the scheduler at
``DASK_SCHEDULER_ADDRESS``; the settings are the server's, from the environment). The code lives in
``app/notebook_api.py`` (``hp.show``'s drawing in ``dashboards/notebook_show.py``); this package only names what is
public.
"""

from app.notebook_api import (
    Client,
    Integrated,
    ProgressBar,
    annotate,
    annotators,
    client,
    connect,
    integrate,
    models,
    runs,
    use_local,
)
from app.notebook_errors import AccessDenied, Conflict, InputError, NotFound, PlatformError, RunFailed, Unavailable
from dashboards.notebook_show import show

__all__ = ["AccessDenied", "Client", "Conflict", "InputError", "Integrated", "NotFound", "PlatformError", "ProgressBar",
           "RunFailed", "Unavailable", "annotate", "annotators", "client", "connect", "integrate", "models", "runs",
           "show", "use_local"]
