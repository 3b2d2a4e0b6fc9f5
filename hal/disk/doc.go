// Package disk reads the node's block devices: the inventory from sysfs (model,
// serial, size, sector sizes, partitions, md/dm members, mounted filesystems
// with their usage), I/O counters from /proc/diskstats with a helper that turns
// two readings into rates, and health from smartmontools.
//
// Operational notes: readers take the sysfs and procfs roots as values (NewFS),
// so fixture trees stand in for a machine. A missing attribute is normal on
// older kernels and is left empty; an unreadable one is reported in the joined
// error while everything else is still returned. SMART is read with
// "smartctl -n standby", so a sleeping disk is never woken.
package disk
