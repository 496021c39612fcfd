-- Room on each page of the widgets read model for its rows' next versions, as
-- migration 4 leaves on processor_widgets: 56 % of its updates were HOT at fill
-- factor 100 at 1M widgets (docs/benchmarks-notes.md). Applies to pages
-- written from now on.
ALTER TABLE widgets SET (fillfactor = 90);
