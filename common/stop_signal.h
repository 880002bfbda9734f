#ifndef ALLROUND_COMMON_STOP_SIGNAL_H_
#define ALLROUND_COMMON_STOP_SIGNAL_H_

// SIGTERM and SIGINT as a request to stop cleanly (what systemd, Slurm and Ctrl-C send): the
// handler only sets a flag; the program finishes its current unit of work, checkpoints and
// exits 0. The flag is the one piece of process-wide state, as a signal handler can reach
// nothing else.

namespace allround {

// Installs the handlers; from then on the two signals no longer kill the process.
void InstallStopHandlers();

// Whether SIGTERM or SIGINT arrived since InstallStopHandlers.
bool StopRequested();

// Waits `seconds`, or less when SIGTERM or SIGINT arrives (installing the handlers if need be):
// a finished run that keeps serving its metrics for a last scrape.
void WaitUnlessStopped(double seconds);

}  // namespace allround

#endif  // ALLROUND_COMMON_STOP_SIGNAL_H_
