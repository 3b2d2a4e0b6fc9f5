package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/seed69aca190/edgeagent/agent/dispatch"
	"github.com/seed69aca190/edgeagent/agent/router"
	"github.com/seed69aca190/edgeagent/collectors"
	"github.com/seed69aca190/edgeagent/hal"
	"github.com/seed69aca190/edgeagent/uplink/spool"
)

// builtins are the commands the agent carries out itself.
func (a *Agent) builtins(node, version string, sched *collectors.Scheduler, sp *spool.Spool, st *status, rt *router.Router) map[string]dispatch.Builtin {
	asJSON := func(v any) ([]byte, error) {
		data, err := json.MarshalIndent(v, "", "  ")
		return append(data, '\n'), err
	}
	noArgs := func(name string, f dispatch.Builtin) dispatch.Builtin {
		return func(ctx context.Context, args []string) ([]byte, error) {
			if len(args) > 0 {
				return nil, fmt.Errorf("%s takes no arguments", name)
			}
			return f(ctx, args)
		}
	}
	return map[string]dispatch.Builtin{
		"ping": noArgs("ping", func(context.Context, []string) ([]byte, error) {
			return fmt.Appendf(nil, "pong from %s (edgeagent %s)\n", node, version), nil
		}),
		"inventory": noArgs("inventory", func(ctx context.Context, _ []string) ([]byte, error) {
			return asJSON(hal.Read(ctx, HALOptions(a.cfg, false)))
		}),
		"diag": noArgs("diag", func(context.Context, []string) ([]byte, error) { return asJSON(st.report()) }),
		"collect": func(_ context.Context, args []string) ([]byte, error) {
			if err := sched.CollectNow(args...); err != nil {
				return nil, err
			}
			which := "every collector"
			if len(args) > 0 {
				which = strings.Join(args, ", ")
			}
			return fmt.Appendf(nil, "collecting now: %s\n", which), nil
		},
		"loglevel": func(_ context.Context, args []string) ([]byte, error) {
			switch len(args) {
			case 0:
			case 1:
				var l slog.Level
				if err := l.UnmarshalText([]byte(args[0])); err != nil {
					return nil, fmt.Errorf("log level %q: want debug, info, warn or error", args[0])
				}
				old := a.level.Level()
				a.level.Set(l)
				a.log.Info("log level changed by the controller", "from", old, "to", l)
			default:
				return nil, errors.New("loglevel takes no argument (show) or one (set)")
			}
			return fmt.Appendf(nil, "%s\n", strings.ToLower(a.level.Level().String())), nil
		},
		"config.get": noArgs("config.get", func(context.Context, []string) ([]byte, error) { return a.cfg.Redacted() }),
		"services":   noArgs("services", func(context.Context, []string) ([]byte, error) { return asJSON(rt.Services()) }),
		"service.call": func(ctx context.Context, args []string) ([]byte, error) {
			if len(args) < 1 || len(args) > 2 {
				return nil, errors.New("service.call takes a service name and an optional payload")
			}
			payload := ""
			if len(args) == 2 {
				payload = args[1]
			}
			return rt.Call(ctx, args[0], []byte(payload))
		},
		"spool.stats": noArgs("spool.stats", func(context.Context, []string) ([]byte, error) { return asJSON(sp.Stats()) }),
	}
}
