package cluster

// Watching reports whether r hears its standby's acks as they are put
// (AckNotifier), for tests that must not race its subscription.
func Watching(r *ReplicatedStore) bool { return r.watching.Load() }
