package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// LogRedisTo sends what go-redis logs (a pool that cannot dial, a
// sentinel naming a new master, a subscription set up again) to l at
// warn, under component=redis, instead of its own lines on stderr, so
// that a member's log is one format and --log-level applies. go-redis's
// logger is the process's: the last call wins. Its messages carry
// addresses and errors, never a password.
func LogRedisTo(l *slog.Logger) {
	redis.SetLogger(redisLog{l.With("component", "redis")})
}

type redisLog struct{ l *slog.Logger }

func (r redisLog) Printf(ctx context.Context, format string, v ...any) {
	r.l.WarnContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}
