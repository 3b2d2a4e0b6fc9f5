package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/seed69aca190/edgeagent/internal/text"
)

// SMART health verdicts.
const (
	SmartPassed      = "passed"      // the drive's own assessment is good
	SmartFailing     = "failing"     // the drive predicts failure, or an attribute is past its threshold
	SmartStandby     = "standby"     // the drive sleeps; it was not woken to ask
	SmartUnsupported = "unsupported" // the device has no SMART (virtual disks, some USB bridges)
	SmartUnavailable = "unavailable" // smartctl is missing, failed or timed out
)

// Health is a disk's SMART health. Fields a device type does not report stay nil.
type Health struct {
	Device             string  `json:"device"`
	Status             string  `json:"status"`
	Reason             string  `json:"reason,omitempty"`
	Protocol           string  `json:"protocol,omitempty"` // ATA, NVMe or SCSI
	TemperatureC       *int64  `json:"temperature_c,omitempty"`
	PowerOnHours       *uint64 `json:"power_on_hours,omitempty"`
	ReallocatedSectors *uint64 `json:"reallocated_sectors,omitempty"` // ATA attribute 5
	PendingSectors     *uint64 `json:"pending_sectors,omitempty"`     // ATA attribute 197
	PercentageUsed     *uint64 `json:"percentage_used,omitempty"`     // NVMe endurance used
	MediaErrors        *uint64 `json:"media_errors,omitempty"`        // NVMe
	CriticalWarning    *uint64 `json:"critical_warning,omitempty"`    // NVMe bit field
}

// SmartCtl asks smartmontools for disk health.
type SmartCtl struct {
	Path    string        // smartctl executable; empty means look it up in PATH
	Timeout time.Duration // per device; zero means 30 s
}

// smartctl exit status bits (smartctl(8), "RETURN VALUES").
const (
	smartExitDiskFailing = 1 << 3
	smartExitPrefail     = 1 << 4
)

// Health runs "smartctl --json -a -n standby" on the device (such as /dev/sda).
// It never returns an error: what went wrong is the verdict's reason.
func (s SmartCtl) Health(ctx context.Context, device string) Health {
	path := s.Path
	if path == "" {
		p, err := exec.LookPath("smartctl")
		if err != nil {
			return Health{Device: device, Status: SmartUnavailable, Reason: "smartctl is not installed"}
		}
		path = p
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--json=c", "-a", "-n", "standby", device)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.WaitDelay = time.Second // a stuck child holding the pipe must not outlive the timeout
	err := cmd.Run()
	if ctx.Err() != nil {
		return Health{Device: device, Status: SmartUnavailable, Reason: fmt.Sprintf("smartctl timed out after %v", timeout)}
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return Health{Device: device, Status: SmartUnavailable, Reason: text.EscapeString("run smartctl: " + err.Error())} // a path
	}
	h, perr := parseSmartctl(stdout.Bytes())
	h.Device = device
	if perr != nil {
		return Health{Device: device, Status: SmartUnavailable, Reason: perr.Error()}
	}
	return h
}

// smartctlOutput is the part of smartctl's JSON (json_format_version 1) read here.
type smartctlOutput struct {
	FormatVersion []int `json:"json_format_version"`
	Smartctl      struct {
		Messages []struct {
			String   string `json:"string"`
			Severity string `json:"severity"`
		} `json:"messages"`
		ExitStatus int `json:"exit_status"`
	} `json:"smartctl"`
	Device struct {
		Protocol string `json:"protocol"`
	} `json:"device"`
	SmartStatus *struct {
		Passed bool `json:"passed"`
	} `json:"smart_status"`
	Temperature *struct {
		Current *int64 `json:"current"`
	} `json:"temperature"`
	PowerOnTime *struct {
		Hours *uint64 `json:"hours"`
	} `json:"power_on_time"`
	ATAAttributes *struct {
		Table []struct {
			ID  int `json:"id"`
			Raw struct {
				Value uint64 `json:"value"`
			} `json:"raw"`
		} `json:"table"`
	} `json:"ata_smart_attributes"`
	NVMeLog *struct {
		CriticalWarning *uint64 `json:"critical_warning"`
		PercentageUsed  *uint64 `json:"percentage_used"`
		MediaErrors     *uint64 `json:"media_errors"`
	} `json:"nvme_smart_health_information_log"`
}

// parseSmartctl turns smartctl's JSON into a verdict. smartctl's exit status is
// taken from the JSON, where it is recorded whatever the process returned.
// Its strings are text: encoding/json turns what is not UTF-8 into U+FFFD.
func parseSmartctl(data []byte) (Health, error) {
	var out smartctlOutput
	if err := json.Unmarshal(data, &out); err != nil {
		return Health{}, fmt.Errorf("smartctl output is not JSON: %w", err)
	}
	if len(out.FormatVersion) == 0 || out.FormatVersion[0] != 1 {
		return Health{}, fmt.Errorf("smartctl JSON format version %v, want 1", out.FormatVersion)
	}
	h := Health{Protocol: out.Device.Protocol}
	var msgs []string
	for _, m := range out.Smartctl.Messages {
		msgs = append(msgs, m.String)
		if u := strings.ToUpper(m.String); strings.Contains(u, "STANDBY") || strings.Contains(u, "SLEEP") {
			h.Status, h.Reason = SmartStandby, m.String
			return h, nil
		}
	}
	if out.Temperature != nil {
		h.TemperatureC = out.Temperature.Current
	}
	if out.PowerOnTime != nil {
		h.PowerOnHours = out.PowerOnTime.Hours
	}
	if out.ATAAttributes != nil {
		for _, a := range out.ATAAttributes.Table {
			v := a.Raw.Value
			switch a.ID {
			case 5:
				h.ReallocatedSectors = &v
			case 197:
				h.PendingSectors = &v
			}
		}
	}
	if l := out.NVMeLog; l != nil {
		h.CriticalWarning, h.PercentageUsed, h.MediaErrors = l.CriticalWarning, l.PercentageUsed, l.MediaErrors
	}

	exit := out.Smartctl.ExitStatus
	switch {
	case out.SmartStatus == nil:
		h.Status, h.Reason = SmartUnsupported, "device reports no SMART status"
		if len(msgs) > 0 {
			h.Reason = strings.Join(msgs, "; ")
		}
	case !out.SmartStatus.Passed || exit&smartExitDiskFailing != 0:
		h.Status, h.Reason = SmartFailing, "the drive's self-assessment is FAILED"
	case exit&smartExitPrefail != 0:
		h.Status, h.Reason = SmartFailing, "a pre-failure attribute is at or below its threshold"
	default:
		h.Status = SmartPassed
	}
	return h, nil
}
