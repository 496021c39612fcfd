-- Room on each page of processor_widgets for its rows' next versions: an
-- association or removal updates two widgets' rows, and on a page filled by a
-- load (fill factor 100) that update moves the row and adds an index entry; with
-- room left it stays on its page (a HOT update, no index write). Measured at 1M
-- widgets: 62 % of the updates were HOT at 100 (docs/benchmarks-notes.md).
-- Applies to pages written from now on.
ALTER TABLE processor_widgets SET (fillfactor = 90);
