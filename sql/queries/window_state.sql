SELECT (extract(epoch FROM as_of) * 1000000)::int8, kill_credit FROM killboard.stats_state
