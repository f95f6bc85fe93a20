"""The sensitivity profile: one SQLite file, written one unit of work at a time by one writer.

* :mod:`~mpsearch.profiling.store.schema`: the tables, the schema version (3) and the migration of versions 1 and 2.
* :mod:`~mpsearch.profiling.store.files`: the writer's lock file, file modes, removing a file.
* :mod:`~mpsearch.profiling.store.writer`: :class:`ProfileWriter` and the checks of a resumed run.
* :mod:`~mpsearch.profiling.store.reader`: :class:`Profile` (also: which units a partial profile lacks).
* :mod:`~mpsearch.profiling.store.merge`: :func:`merge_profiles`.
* :mod:`~mpsearch.profiling.store.latency`: the latency table.
* :mod:`~mpsearch.profiling.store.endtoend`: the end-to-end tier's tables.
"""

from mpsearch.profiling.store.endtoend import EndToEndRows, EndToEndWriter, read_end_to_end
from mpsearch.profiling.store.files import ProfileBusyError, WriterLock, lock_path, remove_profile_file, writer_lock
from mpsearch.profiling.store.latency import read_latency, store_latency, write_latency
from mpsearch.profiling.store.merge import merge_profiles
from mpsearch.profiling.store.reader import LOCAL_METRICS, Profile
from mpsearch.profiling.store.schema import SCHEMA, connect, info_from_dict, info_to_dict, migrate, open_current
from mpsearch.profiling.store.writer import ProfileWriter, resumable_units, stored_config, stored_weights

__all__ = ["SCHEMA", "LOCAL_METRICS", "Profile", "ProfileWriter", "ProfileBusyError", "WriterLock", "writer_lock",
           "lock_path", "merge_profiles", "remove_profile_file", "resumable_units", "stored_config", "stored_weights",
           "write_latency", "store_latency", "read_latency", "EndToEndWriter", "EndToEndRows", "read_end_to_end",
           "connect", "open_current", "migrate", "info_to_dict", "info_from_dict"]
