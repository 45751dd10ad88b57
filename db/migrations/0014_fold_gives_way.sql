-- The fold takes every table it uses at its start, without waiting, and gives way when it cannot
-- (db/schema/ledgers.sql, fold_lock_tables): a TRUNCATE whose triggers rebuild read models can no
-- longer deadlock with a busy fold.
CREATE FUNCTION fold_lock_tables() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE users, projects, project_upvotes, project_comments, chains, chain_projects, chain_members,
               forum_threads, forum_posts, messages
        IN ROW SHARE MODE NOWAIT;
    LOCK TABLE fold_state, project_counter_deltas, project_counters_base, project_upvote_moves,
               user_stat_deltas, user_stats_base, conversation_deltas, conversation_base,
               chain_stat_deltas, mv_chain_directory, forum_thread_deltas, mv_forum_threads,
               mv_feed_projects, mv_chain_projects, mv_leaderboard_users, search_document_changes,
               mv_search_documents, mv_search_words, mv_refresh_requests
        IN ROW EXCLUSIVE MODE NOWAIT;
    RETURN true;
END $$;
