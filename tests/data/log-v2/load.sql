COPY events FROM '@DIR@/events.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('t', 'run_id', 'kind', 'source', 'id'), quote '"', delimiter ',', header 1);
COPY experiments FROM '@DIR@/experiments.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('run_id', 'lane', 'kind', 'description', 'status', 'id'), quote '"', delimiter ',', header 1);
COPY llm_calls FROM '@DIR@/llm_calls.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('t', 'run_id', 'role', 'provider', 'model', 'outcome', 'id'), quote '"', delimiter ',', header 1);
COPY memories FROM '@DIR@/memories.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('t', 'text', 'id'), quote '"', delimiter ',', header 1);
COPY memory_terms FROM '@DIR@/memory_terms.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('memory_id', 'term', 'tf'), quote '"', delimiter ',', header 1);
COPY metrics FROM '@DIR@/metrics.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('experiment_id', 'step', 't'), quote '"', delimiter ',', header 1);
COPY runs FROM '@DIR@/runs.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('tag', 'repo', 'started_at', 'id'), quote '"', delimiter ',', header 1);
COPY schema_version FROM '@DIR@/schema_version.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('version', 'applied_at'), quote '"', delimiter ',', header 1);
COPY telemetry FROM '@DIR@/telemetry.csv' (FORMAT 'csv', allow_quoted_nulls false, force_not_null ('t', 'gpu_index'), quote '"', delimiter ',', header 1);
