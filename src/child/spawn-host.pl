#!/usr/bin/perl
# The spawn host, Perl edition: starts workers for the manager (commands, and module workers)
# and reports how they ended. The frames it reads and writes are described in
# src/child/host-protocol.js; the Node edition (spawn-host.js) speaks the same protocol. The
# manager prefers this one where a `perl` is installed: forking from this ~5 MB process costs
# about half of what forking from a Node process does, and every worker is a fork.
#
# Containment (docs/containment.md). Each worker is started by a keeper: a fork of this host
# that makes itself a child subreaper, forks the worker, and stays until the worker's whole
# tree is gone. Whatever the worker starts (in its group, after setsid, double-forked) is
# either still below the worker or has been re-parented to the keeper, so the keeper can find
# and kill all of it, and it signals only its own children that it has not reaped yet: a pid
# cannot be reused until its parent reaps it, so no signal can reach a stranger. The host is a
# subreaper too: what a keeper that was killed leaves behind comes here and is killed at once.
#
# Arguments: MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS (the limits, from protocol.js).
# Uses only modules of perl-base (Debian's essential Perl).
use strict;
use warnings;
use Config;
use Errno ();
use Fcntl qw(F_GETFL F_SETFL F_SETFD O_NONBLOCK);
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM pack_sockaddr_un);

my ($MAX_OUTPUT, $STDERR_TAIL, $FLUSH_LIMIT_MS) = @ARGV;
die "usage: spawn-host.pl MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS\n" unless defined $FLUSH_LIMIT_MS;

my $TICKS = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
my @SIGNAME = split ' ', $Config{sig_name};
# No syscall.ph in perl-base: the numbers of the calls used here, per architecture.
my %SYSCALLS = (x86_64 => { prctl => 157, setitimer => 38 }, aarch64 => { prctl => 167, setitimer => 103 });
my ($ARCH) = $Config{archname} =~ /^(x86_64|aarch64)/;
my $SYS = $ARCH ? $SYSCALLS{$ARCH} : undef;
my ($PR_SET_PDEATHSIG, $PR_SET_CHILD_SUBREAPER) = (1, 36);
# A keeper reads the memory of its worker's tree this often when a cap is set.
my $MEMORY_POLL_US = 100_000;

sub prctl { return $SYS && syscall($SYS->{prctl}, $_[0], $_[1], 0, 0, 0) == 0 }

# The manager decides when workers stop: a Ctrl-C reaching the whole terminal group must not
# kill the host under them, and a command that does not read its input must make the write
# fail with EPIPE, not kill the host. Blocking SIGINT, SIGTERM and SIGPIPE (rather than
# ignoring them) does both and leaves their default actions in place for the children, which
# inherit the mask and clear it just before exec: a SIGTERM that reaches a child between its
# fork and its exec waits there instead of being lost. A child's exit interrupts select(), so
# it is seen at once.
my $HELD = POSIX::SigSet->new(POSIX::SIGINT(), POSIX::SIGTERM(), POSIX::SIGPIPE());
my $NONE = POSIX::SigSet->new;
POSIX::sigprocmask(POSIX::SIG_BLOCK(), $HELD);
# SIGUSR1 wakes a keeper. A keeper is born with it blocked (inherited from here), so one sent
# before the keeper has its handler waits instead of killing it.
POSIX::sigprocmask(POSIX::SIG_BLOCK(), POSIX::SigSet->new(POSIX::SIGUSR1()));
$SIG{CHLD} = sub { };

binmode $_ for \*STDIN, \*STDOUT, \*STDERR;

my $HOST_PID = $$;
my $CONTAINMENT = prctl($PR_SET_CHILD_SUBREAPER, 1) ? 'subreaper' : 'group';

# The worker's command line, directory and ids, where its answer comes (fd 1 or 3), its tree's
# memory cap, and the socket a reused worker's channel connects to, from the configure frame
# (and its environment, which becomes the host's own).
my (@argv, $cwd, $uid, $gid, $answer_fd, $memory_limit, $channel);
my %jobs;     # id -> job
my %by_pid;   # keeper pid -> job
my %by_fd;    # fileno -> [job, stream, handle]; stream: 'report', 'stdin', 'stdout' or 'stderr'
# select() bit vectors: the pipes to read (the manager's stdin, fd 0, always) and the stdins
# with input still to write.
my ($readers, $writers) = ('', '');
vec($readers, 0, 1) = 1;
my $from_manager = '';
# Until then, look for strays among the host's children at every turn (see sweep_strays).
my $sweep_until = 0;

sub now_ms { my ($real) = POSIX::times(); return $real * 1000 / $TICKS }

# Blocking write of a whole buffer, through interruptions.
sub write_all {
  my ($fh, $data) = @_;
  my $off = 0;
  while ($off < length $data) {
    my $n = syswrite($fh, $data, length($data) - $off, $off);
    if (defined $n) { $off += $n; next }
    next if $!{EINTR};
    return 0;
  }
  return 1;
}

sub to_manager { write_all(\*STDOUT, $_[0]) or shutdown_host() }   # the manager is gone

sub errno_name {
  my ($errno) = @_;
  local $! = $errno;
  for my $name (keys %!) { return $name if $!{$name} }
  return "E$errno";
}

sub failure { my ($errno, $step) = @_; return join "\0", errno_name($errno), $step, do { local $! = $errno; "$!" } }

sub spawn_failed {
  my ($id, $payload) = @_;
  to_manager("F $id " . length($payload) . "\n$payload");
}

# Pids of a process's children, from every one of its threads.
sub children_of {
  my ($pid, $one_thread) = @_;
  my @tasks = ($pid);
  if (!$one_thread) {
    opendir(my $dh, "/proc/$pid/task") or return;
    @tasks = grep { /^\d+$/ } readdir $dh;
  }
  my @kids;
  for my $task (@tasks) {
    open(my $fh, '<', "/proc/$pid/task/$task/children") or next;
    push @kids, split ' ', (<$fh> // '');
  }
  return @kids;
}

# The state letter of a process (R, S, Z, ...), or '' when it is gone.
sub state_of {
  open(my $fh, '<', "/proc/$_[0]/stat") or return '';
  my $stat = <$fh> // '';
  return $stat =~ /\)\s+(\S)/ ? $1 : '';
}

sub resident_bytes {
  open(my $fh, '<', "/proc/$_[0]/status") or return 0;
  while (<$fh>) { return $1 * 1024 if /^VmRSS:\s+(\d+)/ }
  return 0;
}

# ---- The keeper: one per worker, a fork of the host ----------------------------------------

# The worker's side of the fork: its group and session, its fds, its ids, then exec.
sub exec_worker {
  my ($in_r, $answer_w, $err_w, $status_w) = @_;
  my $step = 'exec';
  eval {
    # INT, TERM and PIPE (and the keeper's own) back to their default actions (exec resets
    # the handlers).
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), $NONE);
    $step = 'setsid'; POSIX::setsid() or die;   # its own group and session, like `detached`
    $step = 'dup2';
    POSIX::dup2(fileno $in_r, 0) // die;
    if ($answer_fd == 3 || defined $channel) {
      # Keep the status pipe off fd 3, then: stdout to the host's stderr, the answer (or the
      # channel) on 3.
      if (fileno($status_w) == 3) { open(my $moved, '>&', $status_w) or die; $status_w = $moved }
      POSIX::dup2(2, 1) // die;
      POSIX::dup2(fileno $err_w, 2) // die;
      if (fileno($answer_w) == 3) { fcntl($answer_w, F_SETFD, 0) // die }   # keep it across exec
      else { POSIX::dup2(fileno $answer_w, 3) // die }
    } else {
      POSIX::dup2(fileno $answer_w, 1) // die;
      POSIX::dup2(fileno $err_w, 2) // die;
    }
    if (defined $cwd) { $step = 'chdir'; chdir $cwd or die }
    if (defined $gid) { $step = 'setgid'; $) = "$gid $gid"; POSIX::setgid($gid) or die }
    if (defined $uid) { $step = 'setuid'; POSIX::setuid($uid) or die }
    $step = 'exec';
    no warnings 'exec';   # the failure is reported below, not printed
    exec { $argv[0] } @argv;
  };
  syswrite($status_w, failure($! + 0, $step));
  POSIX::_exit(127);
}

# Kill every child of this keeper until none is left. Each pid signalled is a child not yet
# reaped, so it is still the process it was; as each dies, its own children are re-parented
# here (the keeper is their subreaper) and are killed in the next round.
sub kill_tree {
  for (;;) {
    my @kids = children_of($$, 1);
    last unless @kids;
    kill 'KILL', @kids;
    waitpid($_, 0) for @kids;
  }
}

sub keeper {
  my ($worker_fds, $ctl_r, $rep_w) = @_;
  my $report = sub { syswrite($rep_w, $_[0]) };   # EPIPE once the host is gone: nothing to tell
  # Wakes: a child's exit, a request from the host (or the host's death), the memory tick.
  # Blocked except inside sigsuspend, so none can slip in between a check and the wait.
  my $WAKE = POSIX::SigSet->new(POSIX::SIGCHLD(), POSIX::SIGUSR1(), POSIX::SIGALRM());
  POSIX::sigprocmask(POSIX::SIG_BLOCK(), $WAKE);
  $SIG{$_} = sub { } for qw(CHLD USR1 ALRM);
  prctl($PR_SET_CHILD_SUBREAPER, 1);
  prctl($PR_SET_PDEATHSIG, POSIX::SIGUSR1());
  my $host_gone = getppid() != $HOST_PID;

  my $never = sub { my $f = failure($! + 0, $_[0]); $report->('F ' . length($f) . "\n$f"); POSIX::_exit(0) };
  pipe(my $status_r, my $status_w) or $never->('pipe');
  my $worker = fork;
  $never->('fork') unless defined $worker;
  exec_worker(@$worker_fds, $status_w) if $worker == 0;
  # Nothing of the host's but what the keeper uses: another worker's pipes held here would
  # keep that worker's input or output from ever closing.
  my %keep = map { $_ => 1 } 2, fileno $status_r, fileno $ctl_r, fileno $rep_w;
  if (opendir(my $dh, '/proc/self/fd')) {
    my @fds = grep { /^\d+$/ && !$keep{$_} } readdir $dh;
    closedir $dh;
    POSIX::close($_) for @fds;
  }

  # The exec is confirmed when the status pipe closes with nothing written.
  my $why = '';
  while (1) {
    my $n = sysread($status_r, $why, 4096, length $why);
    last if defined $n && $n == 0;
    next if !defined $n && $!{EINTR};
    last unless defined $n;
  }
  $report->(length $why ? 'F ' . length($why) . "\n$why" : "P $worker\n");

  my ($ctl, $memory) = ('', 0);
  my $request = sub {   # signal the worker's group; only while the worker is not reaped
    my ($signal) = @_;
    kill($signal, -$worker) || kill($signal, $worker);
  };
  if ($memory_limit && $SYS && !length $why) {
    syscall($SYS->{setitimer}, 0, pack('q4', 0, $MEMORY_POLL_US, 0, $MEMORY_POLL_US), 0);
  }
  $SIG{ALRM} = sub {
    return if $memory;
    my ($sum, @todo) = (0, children_of($$, 1));
    while (defined(my $pid = shift @todo)) {
      $sum += resident_bytes($pid);
      push @todo, children_of($pid);
    }
    if ($sum > $memory_limit) {
      $memory = 1;
      $request->('KILL');
    }
  };
  my $fl = fcntl($ctl_r, F_GETFL, 0);
  fcntl($ctl_r, F_SETFL, $fl | O_NONBLOCK) if defined $fl;
  $request->('KILL') if $host_gone;
  for (;;) {
    # Requests from the host: signal names, one a line; end of file, the host is gone.
    while (!$host_gone) {
      my $n = sysread($ctl_r, $ctl, 256, length $ctl);
      if (defined $n && $n == 0) { $host_gone = 1; $request->('KILL') }
      last unless $n;
    }
    while ((my $nl = index $ctl, "\n") >= 0) {
      my $signal = substr($ctl, 0, $nl);
      substr($ctl, 0, $nl + 1) = '';
      $request->($signal);
    }
    # Orphans that came here and died: reaped, so no zombie is left behind.
    waitpid($_, POSIX::WNOHANG()) for grep { $_ != $worker } children_of($$, 1);
    last if state_of($worker) =~ /^[ZX]?$/;
    POSIX::sigsuspend($HELD);   # INT, TERM and PIPE stay blocked, as in the host
  }
  # The worker has exited and is not reaped yet: its group id cannot have been reused, so the
  # group is killed now, then the worker is reaped, then whatever is left of its tree.
  kill 'KILL', -$worker;
  waitpid($worker, 0);
  my $status = $?;
  kill_tree();
  $report->("X $status $memory\n");
  POSIX::_exit(0);
}

# ---- The host ------------------------------------------------------------------------------

sub spawn_job {
  my ($id, $stdin) = @_;   # $stdin undef: kept open for an input frame
  my $sock;
  if (defined $channel) {
    # A reused worker talks to the manager over a socket the manager listens on: the host
    # connects and says whose it is, and the worker gets it as its IPC channel (fd 3).
    socket($sock, AF_UNIX, SOCK_STREAM, 0) or return spawn_failed($id, failure($! + 0, 'socket'));
    connect($sock, pack_sockaddr_un($channel)) or return spawn_failed($id, failure($! + 0, 'connect'));
    write_all($sock, "$id\n") or return spawn_failed($id, failure($! + 0, 'connect'));
  }
  my @pipes;
  for (1 .. 5) {
    pipe(my $r, my $w) or return spawn_failed($id, failure($! + 0, 'pipe'));
    push @pipes, $r, $w;
  }
  # Perl opens these close-on-exec: the worker keeps only what exec_worker moves to 0-3.
  my ($in_r, $in_w, $out_r, $out_w, $err_r, $err_w, $ctl_r, $ctl_w, $rep_r, $rep_w) = @pipes;
  my $answer_w = $sock // $out_w;
  my $pid = fork;
  return spawn_failed($id, failure($! + 0, 'fork')) unless defined $pid;
  keeper([$in_r, $answer_w, $err_w], $ctl_r, $rep_w) if $pid == 0;
  close $_ for $in_r, $out_w, $err_w, $ctl_r, $rep_w;
  close $answer_w if defined $channel;
  close $out_r if defined $channel;   # the worker's stdout goes to the host's stderr then
  my $job = {
    id => $id, keeper => $pid, ctl => $ctl_w, stdin => $in_w, pending => '', close_stdin => 0, report => '',
    stdout => '', out_bytes => 0, overflow => 0, tail => '', open => defined $channel ? 2 : 3, status => undef, deadline => undef,
  };
  $jobs{$id} = $by_pid{$pid} = $job;
  my @streams = ([$rep_r, 'report'], [$err_r, 'stderr'], defined $channel ? () : [$out_r, 'stdout']);
  for (@streams) {
    my ($fh, $stream) = @$_;
    $by_fd{fileno $fh} = [$job, $stream, $fh];
    vec($readers, fileno $fh, 1) = 1;
  }
  my $flags = fcntl($in_w, F_GETFL, 0);
  fcntl($in_w, F_SETFL, $flags | O_NONBLOCK) if defined $flags;
  $by_fd{fileno $in_w} = [$job, 'stdin', $in_w];
  input_for($job, $stdin) if defined $stdin;
}

# Ask a job's keeper to signal its worker's group. The keeper is a child not reaped yet, so
# waking it cannot reach another process.
sub request {
  my ($job, $signal) = @_;
  return if defined $job->{status} || !$job->{ctl};
  syswrite($job->{ctl}, "$signal\n");
  kill 'USR1', $job->{keeper};
}

# Queue the task's input for the command's stdin, then close it.
sub input_for {
  my ($job, $data) = @_;
  return unless $job->{stdin};
  $job->{pending} .= $data;
  $job->{close_stdin} = 1;
  flush_stdin($job);
}

sub flush_stdin {
  my ($job) = @_;
  my $fh = $job->{stdin};
  while (length $job->{pending}) {
    my $n = syswrite($fh, $job->{pending});
    if (defined $n) { substr($job->{pending}, 0, $n) = ''; next }
    if ($!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR}) { vec($writers, fileno $fh, 1) = 1; return }
    $job->{pending} = '';   # EPIPE: the command does not read its input; its exit says the rest
  }
  close_stdin($job) if $job->{close_stdin};
}

sub close_stdin {
  my ($job) = @_;
  my $fh = $job->{stdin} or return;
  vec($writers, fileno $fh, 1) = 0;
  delete $by_fd{fileno $fh};
  close $fh;
  $job->{stdin} = undef;
}

# What the keeper says: P <pid> (exec done), F <len>\n<why> (never started), X <status>
# <memory> (the worker exited and its tree is gone).
sub keeper_said {
  my ($job) = @_;
  for (;;) {
    my $nl = index $job->{report}, "\n";
    return if $nl < 0;
    my ($kind, @fields) = split / /, substr($job->{report}, 0, $nl);
    if ($kind eq 'F') {
      return if length($job->{report}) < $nl + 1 + $fields[0];
      $job->{failed} = 1;
      spawn_failed($job->{id}, substr($job->{report}, $nl + 1, $fields[0]));
      substr($job->{report}, 0, $nl + 1 + $fields[0]) = '';
      next;
    }
    substr($job->{report}, 0, $nl + 1) = '';
    if ($kind eq 'P') { $job->{pid} = $fields[0]; to_manager("P $job->{id} $fields[0]\n") }
    elsif ($kind eq 'X') { ($job->{exit}, $job->{memory}) = @fields }
  }
}

sub read_job {
  my ($fh) = @_;
  my ($job, $stream) = @{ $by_fd{fileno $fh} };
  my $n = sysread($fh, my $chunk, 65536);
  return if !defined $n && $!{EINTR};
  if ($n) {
    if ($stream eq 'report') {
      $job->{report} .= $chunk;
      keeper_said($job);
    } elsif ($stream eq 'stderr') {
      write_all(\*STDERR, $chunk);   # the worker's own diagnostics, forwarded
      $job->{tail} = substr($job->{tail} . $chunk, -$STDERR_TAIL);
    } elsif (!$job->{overflow}) {
      $job->{out_bytes} += $n;
      if ($job->{out_bytes} > $MAX_OUTPUT) {
        $job->{overflow} = 1;
        $job->{stdout} = '';
        request($job, 'KILL');
      } else {
        $job->{stdout} .= $chunk;
      }
    }
    return;
  }
  vec($readers, fileno $fh, 1) = 0;
  delete $by_fd{fileno $fh};
  close $fh;
  $job->{open}--;
}

# A child of the host that is no keeper came from the tree of a keeper that died (killed from
# outside): its attempt has ended, so it is killed. It is a child not reaped yet, so its pid is
# still its own; reap() collects it, and what it leaves comes here in turn.
sub sweep_strays {
  my @strays = grep { !$by_pid{$_} } children_of($$, 1);
  kill 'KILL', @strays if @strays;
  $sweep_until = now_ms() + 2000 if @strays;
}

# Collect the keepers' exit statuses (and the strays').
sub reap {
  my $reaped = 0;
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    $reaped++;
    my $job = delete $by_pid{$pid} or next;
    $job->{status} = $?;
    $job->{deadline} = now_ms() + $FLUSH_LIMIT_MS;
    close_stdin($job);
    close $job->{ctl};
    $job->{ctl} = undef;
    # A keeper that left without its report was killed: its worker's tree comes here.
    $sweep_until = now_ms() + 2000 if $? != 0;
  }
  sweep_strays() if $reaped && $CONTAINMENT eq 'subreaper' || $sweep_until > now_ms();
}

# Report exits whose output is complete (or waited for long enough).
sub report_exits {
  my $now;
  for my $job (values %jobs) {
    next unless defined $job->{status};
    if ($job->{open} > 0) {
      $now //= now_ms();
      next if $now < $job->{deadline};
      for my $fd (keys %by_fd) {
        my ($owner, $stream, $fh) = @{ $by_fd{$fd} };
        next unless $owner == $job;
        vec($readers, $fd, 1) = 0;
        delete $by_fd{$fd};
        close $fh;
      }
    }
    delete $jobs{$job->{id}};
    if (!$job->{failed} && !defined $job->{pid}) {
      # The keeper died before it could say either way.
      spawn_failed($job->{id}, join "\0", 'ECHILD', 'spawn', 'the keeper of the worker died');
      next;
    }
    next if $job->{failed};   # reported with F already
    my $st = $job->{exit} // $job->{status};
    my $code = POSIX::WIFEXITED($st) ? POSIX::WEXITSTATUS($st) : '-';
    my $signal = POSIX::WIFSIGNALED($st) ? 'SIG' . $SIGNAME[POSIX::WTERMSIG($st)] : '-';
    to_manager(
      "X $job->{id} $code $signal $job->{overflow} " . length($job->{stdout}) . ' ' . length($job->{tail}) . ' ' . ($job->{memory} // 0) . "\n"
        . $job->{stdout} . $job->{tail},
    );
  }
}

# How long select() may block: until the next flush deadline. A child's exit signal
# interrupts select(), but one that arrives between the last reap and the call interrupts
# nothing, so while workers run the wait is bounded: 1 ms once a worker's pipes have closed
# (it is exiting: its status is a moment away), 200 ms otherwise.
sub timeout {
  my $wait = $sweep_until > now_ms() ? 0.1 : undef;
  for my $job (values %jobs) {
    my $t = defined $job->{deadline} ? ($job->{deadline} - now_ms()) / 1000 : $job->{open} ? 0.2 : 0.001;
    $t = 0 if $t < 0;
    $wait = $t if !defined $wait || $t < $wait;
  }
  return $wait;
}

# The manager is gone (or done with us): no worker outlives it. Each keeper kills its
# worker's tree and leaves; the host waits for them (a moment, unless a process is stuck in
# the kernel), so that none is left to whoever reaps the host.
sub shutdown_host {
  for my $job (values %jobs) {
    next if defined $job->{status};
    close $job->{ctl} if $job->{ctl};
    $job->{ctl} = undef;
    kill 'USR1', $job->{keeper};
  }
  local $SIG{ALRM} = sub { POSIX::_exit(0) };
  alarm 3;
  for (;;) {
    sweep_strays();
    my $pid = waitpid(-1, 0);
    last if $pid <= 0;
    delete $by_pid{$pid};
  }
  POSIX::_exit(0);
}

sub configure {
  my ($payload) = @_;
  my @fields = split /\0/, $payload, -1;
  my $argc = shift @fields;
  @argv = splice @fields, 0, $argc;
  my $envc = shift @fields;
  # The host's own environment becomes the workers': children inherit it as it is.
  %ENV = map { split /=/, $_, 2 } splice @fields, 0, $envc;
  ($cwd, $uid, $gid, $answer_fd, $memory_limit, $channel) = map { defined && length ? $_ : undef } @fields;
  $answer_fd //= 1;
}

# Frames from the manager: C (configure), S (spawn), I (input), K (signal). See host-protocol.js.
sub read_manager {
  my $n = sysread(\*STDIN, $from_manager, 65536, length $from_manager);
  return if !defined $n && $!{EINTR};
  shutdown_host() unless $n;
  while ((my $nl = index $from_manager, "\n") >= 0) {
    my @head = split / /, substr($from_manager, 0, $nl);
    my $kind = $head[0];
    my $len = $kind eq 'C' ? $head[1] : $kind eq 'S' || $kind eq 'I' ? $head[2] : 0;
    $len = 0 if $len eq '-';
    last if length($from_manager) < $nl + 1 + $len;
    my $payload = substr($from_manager, $nl + 1, $len);
    substr($from_manager, 0, $nl + 1 + $len) = '';
    if ($kind eq 'C') { configure($payload) }
    elsif ($kind eq 'S') { spawn_job($head[1], $head[2] eq '-' ? undef : $payload) }
    elsif ($kind eq 'I') { input_for($jobs{$head[1]}, $payload) if $jobs{$head[1]} }
    elsif ($kind eq 'K') { request($jobs{$head[1]}, $head[2] =~ s/^SIG//r) if $jobs{$head[1]} }
  }
}

to_manager("R $$ $CONTAINMENT\n");
for (;;) {
  my ($can_read, $can_write) = ($readers, $writers);
  my $ready = select($can_read, $writers =~ /[^\0]/ ? $can_write : undef, undef, timeout());
  if ($ready > 0) {
    # The ready pipes, taken before any is closed: the manager's frames may close one and
    # open another under the same number in this round, and that one is not ready.
    my @ready = map { [$_, $by_fd{$_}] } grep { vec($can_read, $_, 1) || vec($can_write, $_, 1) } keys %by_fd;
    read_manager() if vec($can_read, 0, 1);
    for (@ready) {
      my ($fd, $entry) = @$_;
      next unless ($by_fd{$fd} // 0) == $entry;   # closed in this round
      if ($entry->[1] eq 'stdin') {
        vec($writers, $fd, 1) = 0;
        flush_stdin($entry->[0]);
      } else {
        read_job($entry->[2]);
      }
    }
  }
  reap();
  report_exits();
}
