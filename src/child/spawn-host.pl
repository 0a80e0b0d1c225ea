#!/usr/bin/perl
# The spawn host, Perl edition: starts workers for the manager (commands, and module workers
# that serve one task) and reports how they ended. The frames it reads and writes are
# described in src/child/host-protocol.js; the Node edition (spawn-host.js) speaks the same
# protocol. The manager prefers this one where a `perl` is installed: forking from this ~5 MB
# process costs about half of what forking from a Node process does, and every worker is a
# fork.
#
# Arguments: MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS (the limits, from protocol.js).
# Uses only modules of perl-base (Debian's essential Perl).
use strict;
use warnings;
use Config;
use Errno ();
use Fcntl qw(F_GETFL F_SETFL F_SETFD O_NONBLOCK);
use POSIX ();

my ($MAX_OUTPUT, $STDERR_TAIL, $FLUSH_LIMIT_MS) = @ARGV;
die "usage: spawn-host.pl MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS\n" unless defined $FLUSH_LIMIT_MS;

my $TICKS = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
my @SIGNAME = split ' ', $Config{sig_name};

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
$SIG{CHLD} = sub { };

binmode $_ for \*STDIN, \*STDOUT, \*STDERR;

# The worker's command line, directory and ids, and where its answer comes (fd 1 or 3), from
# the configure frame (and its environment, which becomes the host's own).
my (@argv, $cwd, $uid, $gid, $answer_fd);
my %jobs;     # id -> job
my %by_pid;   # pid -> job
my %by_fd;    # fileno -> [job, stream, handle]; stream: 'status', 'stdin', 'stdout' or 'stderr'
# select() bit vectors: the pipes to read (the manager's stdin, fd 0, always) and the stdins
# with input still to write.
my ($readers, $writers) = ('', '');
vec($readers, 0, 1) = 1;
my $from_manager = '';

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

sub spawn_failed {
  my ($id, $code, $step, $description) = @_;
  my $payload = join "\0", $code, $step, $description;
  to_manager("F $id " . length($payload) . "\n$payload");
}

sub spawn_job {
  my ($id, $stdin) = @_;   # $stdin undef: kept open for an input frame
  my @pipes;
  for (1 .. 4) {
    pipe(my $r, my $w) or return spawn_failed($id, errno_name($! + 0), 'pipe', "$!");
    push @pipes, $r, $w;
  }
  # Perl opens these close-on-exec, so the status pipe reads EOF once exec has succeeded.
  my ($in_r, $in_w, $out_r, $out_w, $err_r, $err_w, $status_r, $status_w) = @pipes;
  my $pid = fork;
  return spawn_failed($id, errno_name($! + 0), 'fork', "$!") unless defined $pid;
  if ($pid == 0) {
    my $step = 'exec';
    eval {
      # INT, TERM and PIPE back to their default actions (exec resets the CHLD handler).
      POSIX::sigprocmask(POSIX::SIG_SETMASK(), $NONE);
      $step = 'setsid'; POSIX::setsid() or die;   # its own group and session, like `detached`
      $step = 'dup2';
      POSIX::dup2(fileno $in_r, 0) // die;
      if ($answer_fd == 3) {
        # Keep the status pipe off fd 3, then: stdout to the host's stderr, the answer on 3.
        if (fileno($status_w) == 3) { open(my $moved, '>&', $status_w) or die; $status_w = $moved }
        POSIX::dup2(2, 1) // die;
        POSIX::dup2(fileno $err_w, 2) // die;
        if (fileno($out_w) == 3) { fcntl($out_w, F_SETFD, 0) // die }   # keep it across exec
        else { POSIX::dup2(fileno $out_w, 3) // die }
      } else {
        POSIX::dup2(fileno $out_w, 1) // die;
        POSIX::dup2(fileno $err_w, 2) // die;
      }
      if (defined $cwd) { $step = 'chdir'; chdir $cwd or die }
      if (defined $gid) { $step = 'setgid'; $) = "$gid $gid"; POSIX::setgid($gid) or die }
      if (defined $uid) { $step = 'setuid'; POSIX::setuid($uid) or die }
      $step = 'exec';
      no warnings 'exec';   # the failure is reported below, not printed
      exec { $argv[0] } @argv;
    };
    my $errno = $! + 0;
    my $payload = join "\0", errno_name($errno), $step, do { local $! = $errno; "$!" };
    syswrite($status_w, $payload);
    POSIX::_exit(127);
  }
  close $_ for $in_r, $out_w, $err_w, $status_w;
  # The child's exec is confirmed (P) or refused (F) when its status pipe speaks; meanwhile
  # the host goes on with other work, and the task already waits on the command's stdin.
  my $job = {
    id => $id, pid => $pid, stdin => $in_w, pending => '', close_stdin => 0, why => '',
    stdout => '', out_bytes => 0, overflow => 0, tail => '', open => 3, status => undef, deadline => undef,
  };
  $jobs{$id} = $by_pid{$pid} = $job;
  $by_fd{fileno $status_r} = [$job, 'status', $status_r];
  $by_fd{fileno $out_r} = [$job, 'stdout', $out_r];
  $by_fd{fileno $err_r} = [$job, 'stderr', $err_r];
  vec($readers, fileno $_, 1) = 1 for $status_r, $out_r, $err_r;
  my $flags = fcntl($in_w, F_GETFL, 0);
  fcntl($in_w, F_SETFL, $flags | O_NONBLOCK) if defined $flags;
  $by_fd{fileno $in_w} = [$job, 'stdin', $in_w];
  input_for($job, $stdin) if defined $stdin;
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

sub read_job {
  my ($fh) = @_;
  my ($job, $stream) = @{ $by_fd{fileno $fh} };
  my $n = sysread($fh, my $chunk, 65536);
  return if !defined $n && $!{EINTR};
  if ($n) {
    if ($stream eq 'status') {
      $job->{why} .= $chunk;
    } elsif ($stream eq 'stderr') {
      write_all(\*STDERR, $chunk);   # the worker's own diagnostics, forwarded
      $job->{tail} = substr($job->{tail} . $chunk, -$STDERR_TAIL);
    } elsif (!$job->{overflow}) {
      $job->{out_bytes} += $n;
      if ($job->{out_bytes} > $MAX_OUTPUT) {
        $job->{overflow} = 1;
        $job->{stdout} = '';
        kill 'KILL', -$job->{pid};
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
  started($job) if $stream eq 'status';
}

# The status pipe closed: at the exec (nothing was written), or at the exit of a child whose
# exec failed (it wrote why).
sub started {
  my ($job) = @_;
  if (length $job->{why}) {
    my ($code, $step, $description) = split /\0/, $job->{why}, 3;
    $job->{failed} = 1;
    spawn_failed($job->{id}, $code, $step, $description);
  } else {
    to_manager("P $job->{id} $job->{pid}\n");
  }
}

# Collect exit statuses. Whatever a worker left in its group goes with it, which also closes
# pipes a grandchild inherited, so its output cannot keep the exit waiting for long.
sub reap {
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    my $job = delete $by_pid{$pid} or next;
    $job->{status} = $?;
    $job->{deadline} = now_ms() + $FLUSH_LIMIT_MS;
    kill 'KILL', -$pid;
    close_stdin($job);
  }
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
        started($job) if $stream eq 'status';
      }
    }
    delete $jobs{$job->{id}};
    next if $job->{failed};   # reported with F already
    my $st = $job->{status};
    my $code = POSIX::WIFEXITED($st) ? POSIX::WEXITSTATUS($st) : '-';
    my $signal = POSIX::WIFSIGNALED($st) ? 'SIG' . $SIGNAME[POSIX::WTERMSIG($st)] : '-';
    to_manager(
      "X $job->{id} $code $signal $job->{overflow} " . length($job->{stdout}) . ' ' . length($job->{tail}) . "\n"
        . $job->{stdout} . $job->{tail},
    );
  }
}

# How long select() may block: until the next flush deadline. A child's exit signal
# interrupts select(), but one that arrives between the last reap and the call interrupts
# nothing, so while workers run the wait is bounded: 1 ms once a worker's pipes have closed
# (it is exiting: its status is a moment away), 200 ms otherwise.
sub timeout {
  my $wait;
  for my $job (values %jobs) {
    my $t = defined $job->{deadline} ? ($job->{deadline} - now_ms()) / 1000 : $job->{open} ? 0.2 : 0.001;
    $t = 0 if $t < 0;
    $wait = $t if !defined $wait || $t < $wait;
  }
  return $wait;
}

# The manager is gone (or done with us): no worker outlives it.
sub shutdown_host {
  kill 'KILL', -$_->{pid} for values %jobs;
  exit 0;
}

sub configure {
  my ($payload) = @_;
  my @fields = split /\0/, $payload, -1;
  my $argc = shift @fields;
  @argv = splice @fields, 0, $argc;
  my $envc = shift @fields;
  # The host's own environment becomes the workers': children inherit it as it is.
  %ENV = map { split /=/, $_, 2 } splice @fields, 0, $envc;
  ($cwd, $uid, $gid, $answer_fd) = map { defined && length ? $_ : undef } @fields;
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
    elsif ($kind eq 'K') {
      my $job = $jobs{$head[1]};
      # Before its exec the child may not lead its own group yet: then it is signalled alone.
      kill($head[2], -$job->{pid}) || kill($head[2], $job->{pid}) if $job && !defined $job->{status};
    }
  }
}

to_manager("R $$\n");
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
